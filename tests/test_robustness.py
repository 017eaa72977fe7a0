"""evaluation/robustness: the report of every attack, AutoAttack's cascade, the masking
checklist on masked and smooth models, the report files, the saved examples
(`evaluation.save_examples`) and the progress lines (docs/evaluation.md)."""

import json
import logging
import re

import numpy as np
import pytest

from siriib_jax.config_errors import ConfigError
from siriib_jax.config_validation import validate_evaluation_config
from siriib_jax.configs import default
from siriib_jax.evaluation import evaluate_robustness
from tests.helpers import LinearClassifier, fast_evaluation, self_labelled_points


def test_masked_gradients_fail_the_checklist(config):
  model = LinearClassifier(quantise=True)
  variables, x, y = self_labelled_points(model)
  report = evaluate_robustness(model, variables, fast_evaluation(config), (x, y),
                               attacks=("clean", "pgd5", "pgd10", "square"))
  items = {c.name: c for c in report.checklist}
  assert not report.passed
  assert items["large_eps"].passed is False
  # The gradient is zero almost everywhere: only PGD's random start in the 64/255-ball
  # breaks points (about half of them), far from the ≤ 1 % of a working attack.
  assert items["large_eps"].values["accuracy"] >= 0.25
  assert items["black_box_weaker"].passed is False  # Square beats the stuck gradient.
  assert report.accuracy("square") < report.accuracy("pgd10")


def test_smooth_model_passes_and_report_files_agree(config, tmp_path):
  model = LinearClassifier()
  variables, x, y = self_labelled_points(model)
  report = evaluate_robustness(model, variables, fast_evaluation(config), (x, y),
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
  # The report's meta records what ran, not the config's default list.
  assert saved["meta"]["evaluation"]["attacks"] == [
      "clean", "pgd5", "pgd10", "autoattack", "l2-pgd5"]
  assert saved["meta"]["evaluation"]["subset_size"] == 0
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


# Issue 16 items 4 and 5: saved examples and progress, from one evaluation.
ATTACKS = ("clean", "pgd5", "square", "autoattack")


class _Writer:
  """A clu `MetricWriter` stand-in: keeps what `write_scalars` receives."""

  def __init__(self):
    self.scalars = []

  def write_scalars(self, step, scalars):
    self.scalars.append((step, dict(scalars)))


class _Lines(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  config = fast_evaluation(default.get_config())
  config.evaluation.batch_size = 16  # Two chunks of the 32 points: progress mid-attack.
  config.evaluation.checklist.large_eps = 0
  config.evaluation.save_examples = True
  model = LinearClassifier()
  variables, x, y = self_labelled_points(model)
  y = y.copy()
  y[:2] = (y[:2] + 1) % 10  # Two clean errors.
  directory = tmp_path_factory.mktemp("evaluation")
  writer, lines = _Writer(), _Lines()
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.addHandler(lines)
  absl_logger.setLevel(logging.INFO)
  try:
    report = evaluate_robustness(model, variables, config, (x, y), attacks=ATTACKS,
                                 directory=str(directory), writer=writer)
  finally:
    absl_logger.removeHandler(lines)
    absl_logger.setLevel(level)
  return model, variables, x, y, config, report, directory, writer, lines.lines


@pytest.mark.parametrize("name", ATTACKS[1:])
def test_saved_examples_re_check_by_re_predicting_x_adv(saved_run, name):
  model, variables, x, y, config, report, directory, _, _ = saved_run
  saved = np.load(directory / f"{name}.npz")
  assert set(saved.files) == {"x_adv", "clean_prediction", "adversarial_prediction",
                              "robust", "label", "index"}
  np.testing.assert_array_equal(saved["label"], y)
  np.testing.assert_array_equal(saved["index"], np.arange(len(y)))
  x_adv = saved["x_adv"]
  assert x_adv.shape == x.shape and x_adv.dtype == np.float32
  assert np.abs(x_adv - x).max() <= config.evaluation.linf.eps + 1e-6
  assert x_adv.min() >= 0 and x_adv.max() <= 1
  predict = lambda images: np.argmax(np.asarray(model.apply(variables, images)), axis=1)
  np.testing.assert_array_equal(saved["clean_prediction"], predict(x))
  np.testing.assert_array_equal(saved["adversarial_prediction"], predict(x_adv))
  rechecked = (predict(x) == y) & (predict(x_adv) == y)
  np.testing.assert_array_equal(saved["robust"], rechecked)
  assert not saved["robust"][:2].any()  # The clean errors.
  assert saved["robust"].mean() == pytest.approx(report.accuracy(name))
  assert report.accuracy(name) < report.accuracy("clean")  # Something was broken.


def test_no_examples_are_saved_by_default(tmp_path):
  model = LinearClassifier()
  variables, x, y = self_labelled_points(model, n=8)
  config = fast_evaluation(default.get_config())
  config.evaluation.checklist.large_eps = 0
  assert config.evaluation.save_examples is False
  evaluate_robustness(model, variables, config, (x, y), attacks=("clean", "fgsm"),
                      directory=str(tmp_path))
  assert not list(tmp_path.glob("*.npz"))


def test_save_examples_must_be_a_bool():
  config = default.get_config()
  with config.ignore_type():  # As a config file built without the defaults could hold.
    config.evaluation.save_examples = "yes"
  with pytest.raises(ConfigError, match="evaluation.save_examples"):
    validate_evaluation_config(config)


def test_progress_is_logged_per_attack_and_component_during_the_run(saved_run):
  *_, writer, lines = saved_run
  progress = [line for line in lines if line.startswith("robustness ")]
  pattern = re.compile(r"robustness (\S+)(?: (apgd-ce|apgd-t|fab-t|square))?(?: target \d/\d)?: "
                       r"(\d+)/(\d+) points done, (\d+) still robust, [\d.]+ s elapsed, "
                       r"ETA ([\d.]+ s|unknown)")
  parsed = [pattern.fullmatch(line) for line in progress]
  assert all(parsed), [line for line, m in zip(progress, parsed) if not m]
  # pgd5 on the 30 clean-correct points in chunks of 16: a line after each chunk.
  pgd = [(int(m[3]), int(m[4])) for m in parsed if m[1] == "pgd5"]
  assert pgd == [(16, 30), (30, 30)]
  components = {m[2] for m in parsed if m[1] == "autoattack"}
  assert components == {"apgd-ce", "apgd-t", "fab-t", "square"}
  square = [m for m in parsed if m[1] == "square"]
  assert int(square[-1][3]) == int(square[-1][4]) == 30
  # The same numbers through the metric writer, one step per report.
  assert [step for step, _ in writer.scalars] == list(range(len(progress)))
  first = writer.scalars[0][1]
  assert set(first) == {f"progress/pgd5/{k}" for k in ("points_done", "points_robust",
                                                       "elapsed_s", "eta_s")}
  assert first["progress/pgd5/points_done"] == 16
  assert any("progress/autoattack/fab-t/points_robust" in s for _, s in writer.scalars)


def test_a_second_evaluation_of_the_same_shapes_compiles_nothing(config, compile_events):
  model = LinearClassifier()
  variables, x, y = self_labelled_points(model, n=12)
  config = fast_evaluation(config)
  config.evaluation.checklist.large_eps = 0.0
  names = ("clean", "pgd3", "cw3", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack")
  first = evaluate_robustness(model, variables, config, (x, y), attacks=names)
  before = compile_events.count("/jax/core/compile/backend_compile_duration")
  second = evaluate_robustness(model, variables, config, (x, y), attacks=names)
  again = compile_events.count("/jax/core/compile/backend_compile_duration") - before
  assert not again, f"{again} programs compiled again"
  assert [r.robust for r in second.rows] == [r.robust for r in first.rows]
