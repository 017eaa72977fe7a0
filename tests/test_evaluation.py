"""Robustness evaluation: the masking checklist on masked and smooth models, the report
files, the stratified subset, the SVD swap study, adaptive attacks, the eval command."""

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_training_config, write_npz_dataset
from siriib_jax import train as train_lib
from siriib_jax.data import InputPipeline
from siriib_jax.evaluation import (TABLE4_LOSSES, Target, adaptive_pgd, evaluate_robustness,
                                   loss_weights, select_points, swap_accuracies)
from siriib_jax.models import Classifier, ModelOutput, SiRIIB, logits_fn, outputs_fn
from siriib_jax.models.wide_resnet import WideResNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Linear(nn.Module):
  """A linear classifier on 8×8×3 images; `quantise` puts `round(4x) / 4` in front, whose
  gradient is zero almost everywhere (masked gradients, Athalye et al. 2018)."""
  quantise: bool = False

  @nn.compact
  def __call__(self, x, train=False):
    del train
    if self.quantise:
      x = jnp.round(x * 4) / 4
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _points(model, n=32, seed=0):
  """Images in (0.2, 0.8) labelled with the model's own predictions (clean accuracy 1)."""
  x = np.random.default_rng(seed).uniform(0.2, 0.8, (n, 8, 8, 3)).astype(np.float32)
  variables = model.init(jax.random.key(seed), x[:1])
  return variables, x, np.asarray(jnp.argmax(logits_fn(model, variables)(x), -1))


def _fast(config):
  e = config.evaluation
  e.batch_size, e.square_queries = 32, 100
  e.checklist.large_eps_attack = "pgd10"
  return config


def test_masked_gradients_fail_the_checklist(config):
  model = Linear(quantise=True)
  variables, x, y = _points(model)
  report = evaluate_robustness(model, variables, _fast(config), (x, y),
                               attacks=("clean", "pgd5", "pgd10", "square"))
  items = {c.name: c for c in report.checklist}
  assert not report.passed
  assert items["large_eps"].passed is False
  assert items["large_eps"].values["accuracy"] > 0.5
  assert items["black_box_weaker"].passed is False  # Square beats the stuck gradient.
  assert report.accuracy("square") < report.accuracy("pgd10")


def test_smooth_model_passes_and_report_files_agree(config, tmp_path):
  model = Linear()
  variables, x, y = _points(model)
  report = evaluate_robustness(model, variables, _fast(config), (x, y),
                               attacks=("clean", "pgd5", "pgd10", "autoattack", "l2-pgd5"),
                               directory=str(tmp_path))
  items = {c.name: c for c in report.checklist}
  assert report.passed, report.checklist
  assert items["large_eps"].passed and items["more_steps"].passed
  assert items["autoattack_strongest"].passed and items["black_box_weaker"].passed
  assert items["adaptive"].passed is None  # Not a SiRIIB model.
  assert report.accuracy("clean") == 1.0 and report.accuracy("autoattack") < 1.0

  saved = json.loads((tmp_path / "robustness.json").read_text())
  markdown = (tmp_path / "robustness.md").read_text()
  assert saved["passed"] is True and len(saved["rows"]) == len(report.rows)
  for row in saved["rows"]:
    if row["group"] in ("clean", "linf", "l2"):
      cells = f"| {100 * row['accuracy']:.2f} | {row['robust']} / {row['total']} |"
      assert cells in markdown, (row, markdown)
      assert row["robust"] / row["total"] == pytest.approx(row["accuracy"])
  cascade = saved["autoattack"]["autoattack"]
  assert list(cascade) == ["apgd-ce", "apgd-t", "fab-t", "square"]
  broken = sum(c["broken"] for c in cascade.values())
  assert cascade["square"]["accuracy_after"] == pytest.approx(
      report.accuracy("autoattack")) == pytest.approx((32 - broken) / 32)
  for item in saved["checklist"]:
    assert re.search(rf"\| {item['name']} \| (pass|\*\*FAIL\*\*|skipped) \|", markdown)


def test_subset_is_stratified_and_fixed_by_seed(config):
  config.dataset.name = "cifar10_sample"
  data = InputPipeline(config.dataset, global_batch_size=64, seed=0, training=False)
  all_labels = select_points(data)[1]
  images, labels = select_points(data, 100, seed=3)
  again = select_points(data, 100, seed=3)
  other = select_points(data, 100, seed=4)
  assert len(labels) == 100 and images.dtype == np.uint8
  assert np.array_equal(images, again[0]) and np.array_equal(labels, again[1])
  assert not np.array_equal(images, other[0])
  expected = 100 * np.bincount(all_labels) / len(all_labels)
  assert np.all(np.abs(np.bincount(labels, minlength=10) - expected) < 1)


def test_swap_with_own_singular_values_changes_nothing():
  model = Linear()
  variables, x, y = _points(model)
  fn = logits_fn(model, variables)
  x_adv = np.clip(x + np.random.default_rng(1).uniform(-0.1, 0.1, x.shape), 0, 1)
  x_adv = x_adv.astype(np.float32)
  accuracy_adv, accuracy_swap, x_swap = swap_accuracies(fn, x_adv, x_adv, y, 16)
  assert accuracy_swap == accuracy_adv < 1.0
  np.testing.assert_allclose(x_swap, x_adv, atol=1e-4)
  _, _, x_clean_swap = swap_accuracies(fn, x_adv, x, y, 16)
  assert np.abs(x_clean_swap - x_adv).max() > 1e-2  # The clean Σ does change the image.


class SiriibLike(nn.Module):
  """The outputs of a SiRIIB classifier at a fraction of its compile time: `x_avg` =
  sigmoid(conv(x)), one skip feature `f = conv(x_avg)`, logits from x and f."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x_avg = nn.sigmoid(nn.Conv(3, (3, 3))(x))
    feature = nn.Conv(4, (3, 3))(x_avg)
    hidden = jnp.concatenate([x, feature], axis=-1).reshape(x.shape[0], -1)
    return ModelOutput(nn.Dense(10)(hidden), x_avg, (feature,))


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
  variables, x, y = _points(model, n=16)
  _adaptive_stays_in_the_ball(model, x[:4], y[:4])
  config.evaluation.adaptive_steps = 3
  report = evaluate_robustness(model, variables, _fast(config), (x, y),
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


@pytest.mark.slow
def test_eval_and_svd_study_commands_end_to_end(tmp_path):
  config = tiny_training_config(write_npz_dataset(tmp_path / "data"))
  config.max_steps = 2
  workdir = str(tmp_path / "run")
  train_lib.train_and_evaluate(config, workdir)
  flags = ["--config.dataset.name=npz", f"--config.dataset.data_dir={tmp_path / 'data'}",
           "--config.model.siriib.scales=(32, 16)",
           "--config.evaluation.attacks=('clean', 'pgd2', 'cw2', 'adaptive')",
           "--config.evaluation.adaptive_steps=1", "--config.evaluation.batch_size=16",
           "--config.evaluation.checklist.large_eps_attack=pgd2",
           "--config.evaluation.svd_study.attacks=('pgd2', 'cw2')",
           "--config.evaluation.svd_study.grid_attacks=('pgd2', 'cw2')",
           "--config.evaluation.svd_study.grid_images=4"]
  for mode in ("eval", "svd_study"):
    subprocess.run([sys.executable, "main.py", "--config", "configs/quickstart.py",
                    f"--workdir={workdir}", f"--mode={mode}", *flags], cwd=REPO,
                   check=True, timeout=600)
  saved = json.loads((tmp_path / "run" / "evaluation" / "robustness.json").read_text())
  assert saved["meta"]["step"] == 2 and saved["meta"]["num_points"] == 16
  groups = [row["group"] for row in saved["rows"]]
  assert groups.count("adaptive") == 6 and groups.count("checklist") == 1
  study = json.loads((tmp_path / "run" / "evaluation" / "svd_study.json").read_text())
  assert [r["name"] for r in study["results"]] == ["pgd2", "cw2"]
  assert all(os.path.getsize(path) > 0 for path in study["files"])
