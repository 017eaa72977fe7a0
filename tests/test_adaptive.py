"""evaluation/adaptive: the adaptive attacks of Table 4 on SiRIIB-like and SiRIIB models."""

import jax
import numpy as np
import pytest

from siriib_jax.evaluation import (TABLE4_LOSSES, Target, adaptive_pgd, evaluate_robustness,
                                   loss_weights)
from siriib_jax.models import Classifier, SiRIIB, outputs_fn
from siriib_jax.models.wide_resnet import WideResNet
from tests.helpers import SiriibLike, fast_evaluation, self_labelled_points


def _adaptive_stays_in_the_ball(model, x, y):
  variables = model.init(jax.random.key(0), x[:1])
  eps = 8 / 255
  attack = jax.jit(adaptive_pgd(eps, 2 / 255, steps=1, unroll=False))
  for loss in ("svd", "info", "ce+svd+info"):
    result = attack(Target(outputs_fn(model, variables), loss_weights(loss)), x, y,
                    jax.random.key(1))
    x_adv = np.asarray(result.x_adv)
    assert np.abs(x_adv - x).max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert np.abs(x_adv - x).max() > eps / 2  # It moved.


def test_adaptive_table_on_a_siriib_like_model(config):
  model = SiriibLike()
  variables, x, y = self_labelled_points(model, n=16)
  _adaptive_stays_in_the_ball(model, x[:4], y[:4])
  config.evaluation.adaptive_steps = 3
  report = evaluate_robustness(model, variables, fast_evaluation(config), (x, y),
                               attacks=("clean", "adaptive"))
  adaptive = [r for r in report.rows if r.group == "adaptive"]
  assert [r.attack for r in adaptive] == list(TABLE4_LOSSES)
  assert adaptive[-1].label == "L_CE + L_svd + L_info" and adaptive[0].steps == 3
  item = next(c for c in report.checklist if c.name == "adaptive")
  assert item.passed is not None and set(item.values) == set(TABLE4_LOSSES)
  with pytest.raises(ValueError, match="terms"):
    loss_weights("ce+kl")


@pytest.mark.slow
def test_adaptive_attack_on_a_tiny_siriib_model_stays_in_the_ball():
  # WRN-10-1 × 1/4 with SiRIIB at two scales: the smallest real SiRIIB classifier.
  model = Classifier(WideResNet(depth=10, widen_factor=1, width_multiplier=0.25),
                     SiRIIB(scales=(8, 4)))
  x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
  _adaptive_stays_in_the_ball(model, x, np.arange(2))
