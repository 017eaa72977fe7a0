"""The README's main job, end to end (about 9 minutes on 2 quiet cores: `pytest -m slow`)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_trains_offline_and_ends_with_a_robustness_table(tmp_path):
  workdir = tmp_path / "quickstart"
  result = subprocess.run(
      [sys.executable, "main.py", "--config", "configs/quickstart.py", "--workdir",
       str(workdir)], cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["epochs"] == 3
  # It learns: validation accuracy above chance (10 %; 28 % measured with seed 0).
  assert summary["validation"]["clean"] > 15
  rows = {row["name"]: row["accuracy"] for row in summary["final_evaluation"]["rows"]}
  assert set(rows) >= {"clean", "pgd20", "autoattack"}
  # Attacks only remove accuracy.
  assert 0.0 <= rows["autoattack"] <= rows["pgd20"] <= rows["clean"] <= 1.0
  assert "AutoAttack" in result.stdout
