"""Training: one step per strategy, resume, preemption, non-finite losses, bad input."""

import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_training_config, write_npz_dataset
from siriib_jax import train as train_lib
from siriib_jax.checkpointing import Checkpoints, load_variables
from siriib_jax.data import InputPipeline
from siriib_jax.models import create_model
from siriib_jax.training.strategies import STRATEGY_NAMES
from siriib_jax.training.optimizer import make_optimizer
from siriib_jax.training.state import create_train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def npz_dir(tmp_path):
  return write_npz_dataset(tmp_path / "data")


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_one_step_of_each_strategy(tmp_path, npz_dir, strategy):
  # The same config as the tests below (only the strategy changes), so that the pgd_at and
  # te steps compile once for all of them. The TFDS route is tests/test_data.py's.
  config = tiny_training_config(npz_dir)
  config.strategy = strategy
  summary = _run(config, tmp_path / "run", max_steps=1)
  assert summary["status"] == "completed" and summary["step"] == 1
  variables, step = load_variables(str(tmp_path / "run"), "last")
  assert step == 1
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(variables))


def test_a_restored_state_has_the_types_of_a_fresh_one(tmp_path, npz_dir):
  # Equal types (weak_type included) give a resumed run the fresh run's compiled step.
  config = tiny_training_config(npz_dir)
  model = create_model(config.model, 32)
  init = jax.jit(lambda key: create_train_state(model, config, key, (32, 32, 3), 3, 24))
  fresh = init(jax.random.key(0))
  checkpoints = Checkpoints(str(tmp_path), keep=1)
  checkpoints.save_last(3, fresh)
  restored = checkpoints.restore_latest(jax.eval_shape(init, jax.random.key(0)))
  checkpoints.close()
  assert jax.tree.map(jax.typeof, restored) == jax.tree.map(jax.typeof, fresh)


def _run(config, workdir, **overrides):
  for key, value in overrides.items():
    config[key] = value
  return train_lib.train_and_evaluate(config, str(workdir))


def test_killed_and_resumed_run_is_bit_identical(tmp_path, npz_dir, monkeypatch):
  config = tiny_training_config(npz_dir)  # 24 training examples: 3 steps per epoch.
  config.strategy = "te"  # Its per-example ensemble must survive the restart too.
  straight = _run(config, tmp_path / "straight", max_steps=5)
  assert straight["status"] == "completed" and straight["step"] == 5

  original = InputPipeline.train_batch

  def preempt_at_step_2(self, step):
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return original(self, step)

  monkeypatch.setattr(InputPipeline, "train_batch", preempt_at_step_2)
  killed = _run(config, tmp_path / "resumed", max_steps=5)
  assert killed["status"] == "preempted" and killed["step"] == 3
  monkeypatch.setattr(InputPipeline, "train_batch", original)
  resumed = _run(config, tmp_path / "resumed", max_steps=5)
  assert resumed["status"] == "completed" and resumed["step"] == 5

  a, _ = load_variables(str(tmp_path / "straight"), "last")
  b, _ = load_variables(str(tmp_path / "resumed"), "last")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_best_checkpoint_and_final_evaluation(tmp_path, npz_dir):
  config = tiny_training_config(npz_dir)
  config.final_eval_size = 10
  config.final_eval_attacks = ("clean", "pgd20")
  config.evaluation.checklist.large_eps = 0.0
  config.evaluation.skip_ablation = ("clean", "pgd20")
  summary = _run(config, tmp_path / "run")
  # SiRIIB's IB path: on the validation images in the summary, on the evaluated points
  # (with the skip ablation beside the model's own accuracies) in the report.
  assert summary["ib_path"]["points"] == 10 and 0 <= summary["ib_path"]["ib_dead_fraction"] <= 1
  ib = summary["final_evaluation"]["meta"]["ib_path"]
  assert ib["measured"] and set(ib["ablated"]) == {"clean", "pgd20"}
  assert summary["step"] == 6 and set(summary["validation"]) == {"clean", "pgd"}
  assert summary["best_validation_pgd"] >= summary["validation"]["pgd"]
  _, best_step = load_variables(str(tmp_path / "run"), "best")
  assert best_step in (3, 6)
  final = summary["final_evaluation"]
  assert final["meta"]["checkpoint"] == "best" and final["meta"]["step"] == best_step
  rows = {row["name"]: row["accuracy"] for row in final["rows"]}
  assert set(rows) == {"clean", "pgd20"} and rows["pgd20"] <= rows["clean"]
  assert ib["own"] == rows
  assert "## SiRIIB's IB path" in (tmp_path / "run" / "evaluation" / "robustness.md").read_text()
  assert (tmp_path / "run" / "evaluation" / "robustness.md").exists()
  with open(tmp_path / "run" / "summary.json") as f:
    assert '"status": "completed"' in f.read()


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, npz_dir):
  config = tiny_training_config(npz_dir)
  workdir = tmp_path / "run"
  _run(config, workdir, max_steps=3)  # One epoch: a good checkpoint at step 3.
  good, _ = load_variables(str(workdir), "last")
  config.optimizer.learning_rate = 1e30
  with pytest.raises(train_lib.NonFiniteLossError, match="last good checkpoint"):
    _run(config, workdir, max_steps=6)
  kept, step = load_variables(str(workdir), "last")
  assert step == 3
  for x, y in zip(jax.tree.leaves(good), jax.tree.leaves(kept), strict=True):
    np.testing.assert_array_equal(x, y)


def test_half_precision_trains_a_few_steps_with_finite_losses(tmp_path, npz_dir):
  """bf16 backbone, c(·) and p_i ("exact" W; `models.create_model`), float32 SR blocks: a
  tiny run's losses stay finite (the trainer raises NonFiniteLossError otherwise, checking
  every step: log_every_steps = 1) and so do its parameters and R_τ."""
  config = tiny_training_config(npz_dir)
  config.half_precision = True
  assert config.model.siriib.orthogonality == "exact"
  summary = _run(config, tmp_path / "run", max_steps=3)
  assert summary["status"] == "completed" and summary["step"] == 3
  variables, _ = load_variables(str(tmp_path / "run"), "last")
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(variables))
  assert np.isfinite(summary["orthogonality_error"]) and summary["orthogonality_error"] < 1e-3


_SHARDING_SCRIPT = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, {repo!r}); sys.path.insert(0, os.path.join({repo!r}, "tests"))
import jax, numpy as np
from tests.helpers import tiny_training_config, write_npz_dataset
from siriib_jax import parallel
from siriib_jax.config_errors import ConfigError
from siriib_jax.config_validation import validate_config
from siriib_jax.models import create_model
from siriib_jax.training.strategies import get_strategy
from siriib_jax.training.state import create_train_state
from siriib_jax.training.step import make_train_step
assert jax.device_count() == 8
config = tiny_training_config(write_npz_dataset({data!r}))
config.model.siriib.scales = (16, 8)  # 16x16 images keep the 8-device compile short.
model = create_model(config.model, 16)
step_fn = make_train_step(model, get_strategy(config), config, steps_per_epoch=3)
rng = np.random.default_rng(0)
batch = {{"image": rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
         "label": rng.integers(0, 10, 8).astype(np.int32), "index": np.arange(8)}}
initial = create_train_state(model, config, jax.random.key(0), (16, 16, 3), 3, 24)
results = []
for devices in (jax.devices()[:1], jax.devices()):
  mesh = parallel.data_mesh(devices)
  state = jax.device_put(initial, parallel.replicated(mesh))
  step = jax.jit(step_fn, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh),
                 parallel.replicated(mesh)))
  sharded = parallel.global_batch(batch, mesh)
  assert len(sharded["image"].sharding.device_set) == len(devices)
  state, metrics = step(state, sharded, jax.random.key(1))
  update = jax.tree.map(lambda new, old: new - old, state.params, initial.params)
  results.append(jax.device_get((update, state.batch_stats, metrics["loss"])))
# Equal up to summation order, which can flip the sign of a near-zero input gradient in the
# attack and so move a few pixels of x_adv: the updates agree to 1 % overall, the loss and
# the BatchNorm statistics closely. A per-device BatchNorm (1 example per device) or a
# per-device gradient would be off by far more.
flat = [np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(r[0])]) for r in results]
assert np.linalg.norm(flat[0] - flat[1]) < 0.01 * np.linalg.norm(flat[0]), "updates differ"
np.testing.assert_allclose(results[0][2], results[1][2], rtol=1e-3)
for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
  np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
config.batch_size = 12
try:
  validate_config(config)
  raise SystemExit("batch 12 on 8 devices was accepted")
except ConfigError as error:
  assert "config.batch_size" in str(error) and "8" in str(error), error
print("OK")
"""


def test_sharded_step_on_8_devices_equals_the_single_device_step(tmp_path):
  script = _SHARDING_SCRIPT.format(repo=REPO, data=str(tmp_path))
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=900, check=False)
  assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


def test_clip_global_norm_bounds_the_update_and_is_off_by_default(config):
  config.optimizer.weight_decay = 0.0
  config.optimizer.momentum = 0.0
  params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
  grads = {"a": jnp.full(3, 30.0), "b": jnp.full((2, 2), 40.0)}  # Global norm ≈ 96.
  norm = lambda tree: float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree))))

  def update_norm():
    tx = make_optimizer(config, steps_per_epoch=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    return norm(updates)

  assert update_norm() == pytest.approx(0.1 * norm(grads), rel=1e-6)  # lr 0.1, unclipped.
  config.optimizer.clip_global_norm = 2.0
  assert update_norm() == pytest.approx(0.1 * 2.0, rel=1e-6)
