"""evaluate: `main.py --mode=eval` and `--mode=svd_study` on a trained run, end to end."""

import json
import os
import subprocess
import sys

import pytest

from siriib_jax import train as train_lib
from tests.helpers import tiny_training_config, write_npz_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
