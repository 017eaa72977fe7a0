"""The evaluation report (`evaluation/report.py`): its Markdown and JSON."""

import json

from siriib_jax.evaluation.checklist import CheckItem
from siriib_jax.evaluation.report import Report, Row, to_markdown, write_report


def _report():
  rows = [Row("clean", "clean", "clean", "Clean", "clean", None, None, None, None, 0.5, 5, 10,
              0.1),
          Row("linf", "pgd20", "pgd20", "PGD-20", "pgd", "linf", 8 / 255, 2 / 255, 20, 0.3,
              3, 10, 1.34)]
  meta = {"model": "resnet18-SR", "num_points": 10, "selection": "stratified subset, seed 0",
          "seed": 0}
  return Report(meta, rows, {}, [CheckItem("large_eps", None, "no large-ε PGD run", {})])


def test_markdown_has_one_table_row_per_attack_in_percent():
  text = to_markdown(_report())
  assert "| Clean | — | — | — | 50.00 | 5 / 10 | 0.1 |" in text
  assert "| PGD-20 | linf | 8/255 | 20 | 30.00 | 3 / 10 | 1.3 |" in text
  assert "## Gradient-masking checklist: pass" in text
  assert "| large_eps | skipped | no large-ε PGD run |" in text


def test_a_failed_check_makes_the_report_fail():
  report = _report()
  report.checklist.append(CheckItem("more_steps", False, "PGD-100 > PGD-20", {}))
  assert not report.passed and "checklist: **FAIL**" in to_markdown(report)


def test_write_report_writes_json_that_reads_back(tmp_path):
  json_path, markdown_path = write_report(_report(), str(tmp_path))
  with open(json_path) as f:
    data = json.load(f)
  assert [r["name"] for r in data["rows"]] == ["clean", "pgd20"] and data["passed"]
  assert open(markdown_path).read() == to_markdown(_report())
