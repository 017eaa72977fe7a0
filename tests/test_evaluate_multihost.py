"""`main.py --mode=eval --multihost` (issue 16 items 2-3): two CPU processes joined by
`jax.distributed.initialize` over loopback (gloo collectives), one device each, each
evaluate their share of the test points, every point keyed by its global index; the
gathered report and saved examples equal, point by point, those of one process; only
process 0 writes. Slow (each process compiles the attacks on a ResNet-18-SR × 1/8):
`pytest -m slow tests/test_evaluate_multihost.py`.

Each process of the pair gets its own copy of the trained run as `--workdir`, so that
what process 1 would write is seen apart from process 0's files.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax import train as train_lib
from siriib_jax.checkpointing import load_variables
from siriib_jax.models import create_model, logits_fn
from tests.helpers import tiny_training_config, write_npz_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTACKS = ("pgd3", "autoattack")
FLAGS = ["--config.dataset.name=npz", "--config.model.siriib.scales=(32, 16)",
         "--config.evaluation.checkpoint=last",
         f"--config.evaluation.attacks=('clean', {', '.join(map(repr, ATTACKS))})",
         "--config.evaluation.batch_size=8", "--config.evaluation.square_queries=10",
         "--config.evaluation.linf.eps=0.002", "--config.evaluation.linf.step_size=0.001",
         "--config.evaluation.checklist.large_eps=0", "--config.evaluation.save_examples=True"]
TIMEOUT_S = 2400


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _label_with_predictions(config, workdir, data):
  """Rewrites test.npz with the trained model's own predictions as labels, so that every
  point is attacked (a barely trained model gets about 10 % of random labels right)."""
  model = create_model(config.model, 32)
  variables, _ = load_variables(workdir, "last")
  path = os.path.join(data, "test.npz")
  test = dict(np.load(path))
  logits = logits_fn(model, variables)(jnp.asarray(test["image"], jnp.float32) / 255)
  test["label"] = np.asarray(jnp.argmax(logits, -1)).astype(test["label"].dtype)
  np.savez(path, **test)
  return test["label"]


@pytest.mark.slow
def test_two_processes_evaluate_as_one_process(tmp_path):
  data = write_npz_dataset(tmp_path / "data")
  config = tiny_training_config(data)
  config.max_steps, config.final_eval_size = 2, 0
  train_lib.train_and_evaluate(config, str(tmp_path / "single"))
  labels = _label_with_predictions(config, str(tmp_path / "single"), data)
  for i in range(2):
    shutil.copytree(tmp_path / "single" / "checkpoints",
                    tmp_path / f"host{i}" / "checkpoints")
  port = _free_port()

  def run(workdir, extra):
    command = [sys.executable, "main.py", "--config", "configs/quickstart.py",
               f"--workdir={workdir}", "--mode=eval", f"--config.dataset.data_dir={data}",
               *FLAGS, *extra]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

  processes = [run(tmp_path / f"host{i}",
                   ["--multihost", f"--coordinator_address=localhost:{port}",
                    "--num_processes=2", f"--process_id={i}"]) for i in range(2)]
  processes.append(run(tmp_path / "single", []))
  try:
    outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  for p, output in zip(processes, outputs):
    assert p.returncode == 0, output[-3000:]
  assert "all 2 hosts" in outputs[1]  # The gathered totals are logged on process 1 too.

  assert not (tmp_path / "host1" / "evaluation").exists()  # Process 1 wrote nothing.
  ours, reference = (tmp_path / "host0" / "evaluation", tmp_path / "single" / "evaluation")
  report, expected = (json.loads((d / "robustness.json").read_text())
                      for d in (ours, reference))
  assert report["meta"]["processes"] == 2 and report["meta"]["num_points"] == 16
  strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
  assert strip(report["rows"]) == strip(expected["rows"])
  cascades = lambda r: {name: {c: {k: v for k, v in part.items() if k != "seconds"}
                                for c, part in cascade.items()}
                         for name, cascade in r["autoattack"].items()}
  assert cascades(report) == cascades(expected)
  for name in ATTACKS:
    saved, one = (np.load(d / f"{name}.npz") for d in (ours, reference))
    np.testing.assert_array_equal(one["label"], labels)
    for field in ("robust", "clean_prediction", "adversarial_prediction", "label", "index",
                  "x_adv"):
      np.testing.assert_array_equal(saved[field], one[field], err_msg=f"{name} {field}")
    print(f"{name}: {int(one['robust'].sum())} of 16 points robust")
