"""evaluation/robustness: the report of every attack, AutoAttack's cascade, the masking
checklist on masked and smooth models, and the report files (docs/evaluation.md)."""

import json
import re

import pytest

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
  assert items["large_eps"].values["accuracy"] > 0.5
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
