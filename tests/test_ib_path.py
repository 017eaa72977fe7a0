"""SiRIIB's IB-path health (`evaluation/ib_path.py`): dead units, f_spread, skip ablation."""

import flax
import numpy as np
import pytest

from siriib_jax.evaluation import ib_path
from tests.helpers import tiny_model


def test_dead_unit_fraction_counts_channels_no_image_activates():
  h = np.zeros((4, 2, 2, 5), np.float32)
  h[3, 1, 0, 1] = 0.5  # Channel 1 active once; channel 4 active everywhere.
  h[..., 4] = 1.0
  assert ib_path.dead_unit_fraction(h) == pytest.approx(3 / 5)
  assert ib_path.dead_unit_fraction(np.zeros((2, 1, 1, 3))) == 1.0


def _images(n=12, size=16, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype(np.float32)


def _kill_extractor(variables):
  """c(·)'s last BatchNorm shifted far below 0: every unit of its ReLU dead for any image."""
  params = flax.core.unfreeze(variables["params"])
  extractor = params["siriib"]["extractor"]
  last = sorted(k for k in extractor if k.startswith("bn"))[-1]
  extractor[last]["bias"] = extractor[last]["bias"] - 1e4
  return {**variables, "params": params}


def test_a_collapsed_path_is_detected_and_its_ablation_changes_nothing():
  model, variables = tiny_model()
  dead = _kill_extractor(variables)
  x = _images()
  health = ib_path.path_health(model, dead, x, batch_size=5)
  assert health.dead_fraction == 1.0 and health.collapsed
  assert health.f_spread < 1e-6
  own = model.apply(dead, x).logits
  ablated = ib_path.ablated_logits_fn(model, dead, health.mean_features)(x)
  np.testing.assert_allclose(ablated, own, rtol=1e-5, atol=1e-5)


def test_a_live_path_is_not_collapsed_and_its_ablation_changes_the_logits():
  model, variables = tiny_model()
  x = _images()
  health = ib_path.path_health(model, variables, x, batch_size=5)
  assert health.dead_fraction < 1.0 and not health.collapsed
  assert health.f_spread > 1e-3
  assert [m.shape for m in health.mean_features] == [
      f.shape[1:] for f in model.apply(variables, x[:1]).features]
  own = model.apply(variables, x).logits
  ablated = ib_path.ablated_logits_fn(model, variables, health.mean_features)(x)
  assert float(np.max(np.abs(np.asarray(ablated) - np.asarray(own)))) > 1e-3


def test_path_health_batches_agree_with_one_batch():
  model, variables = tiny_model()
  x = _images(10)
  one = ib_path.path_health(model, variables, x, batch_size=10)
  split = ib_path.path_health(model, variables, x, batch_size=4)
  assert one.dead_fraction == split.dead_fraction
  assert one.f_spread == pytest.approx(split.f_spread, rel=1e-5)
  for a, b in zip(one.mean_features, split.mean_features):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_path_health_refuses_a_model_without_siriib():
  model, variables = tiny_model(siriib=False)
  with pytest.raises(ValueError, match="no SiRIIB"):
    ib_path.path_health(model, variables, _images(2))


def _evaluation(batch_size=8):
  from siriib_jax.configs import default
  evaluation = default.get_config().evaluation
  evaluation.batch_size = batch_size
  return evaluation


def test_skip_ablation_of_a_collapsed_path_equals_the_model_own_accuracy():
  model, variables = tiny_model()
  dead = _kill_extractor(variables)
  x = _images(10)
  y = np.asarray(model.apply(dead, x).logits).argmax(-1)  # Clean accuracy 1.
  result = ib_path.skip_ablation(model, dead, _evaluation(), x, y, attacks=("clean", "pgd3"))
  assert result["health"]["ib_collapsed"]
  assert result["own"] == result["ablated"] and result["unused"]
  assert result["own"]["clean"] == 1.0


def test_skip_ablation_of_a_live_path_changes_the_accuracy():
  model, variables = tiny_model()
  params = flax.core.unfreeze(variables["params"])
  for i in range(3):  # f_i 100× larger: the backbone's logits follow them.
    params["siriib"][f"projection{i}"]["kernel"] = params["siriib"][f"projection{i}"]["kernel"] * 100
  variables = {**variables, "params": params}
  x = _images(10)
  y = np.asarray(model.apply(variables, x).logits).argmax(-1)
  # Labelled with the model's own predictions; given each f_i's mean, it predicts
  # otherwise on some points.
  ablated = ib_path.ablated_logits_fn(
      model, variables, ib_path.path_health(model, variables, x).mean_features)(x)
  assert (np.asarray(ablated).argmax(-1) != y).any()
  result = ib_path.skip_ablation(model, variables, _evaluation(), x, y, attacks=("clean",))
  assert not result["health"]["ib_collapsed"]
  assert result["own"]["clean"] == 1.0 > result["ablated"]["clean"] and not result["unused"]
