"""Train with several processes (`--multihost`): two CPU processes joined by
`jax.distributed.initialize` over loopback (gloo collectives), one device each, take the
same steps as one process with one device and the same global batch. Slow (three
compilations of the step at once): `pytest -m slow`.

The reference is one device, not one process with two forced CPU devices: that run stops in
its first step on the 2-core machines here (also at b2085f3, before session 8; docs/status.md).

What can agree, and what cannot. Data-parallel sums are added in another order on 2 devices
than on 1, so activations differ by float rounding (~1e-6). The training map is not
continuous at that scale: a ReLU whose pre-activation is within rounding of 0 passes its
gradient on one side and not on the other, and PGD's sign step flips with the sign of a
near-zero input gradient. Measured on this tiny config, one process (probes of session 11):
the parameters after step 1 perturbed by 1e-7 relative noise move the gradient of the
training loss by 5.6 % of its largest component in one kernel (backbone stage2_block1), that
of L_ori by 0.69 % in global norm — the same at 1e-6, nothing at 1e-8 or 1e-9: a jump, from
2 ReLU gates of stage2_block1 that flipped; it comes from L_ori alone (λ1 = 0 gives the same
numbers), while L_svd's gradient moves by at most 3e-5 relative (L_info's sits below 1.5e-4
in absolute value). A difference of that size in step 1's update is no longer rounding in
step 2, which amplifies it (the SR blocks' `orthogonal_polar` kernels ended 0.007 apart
after 2 steps), so two runs' parameters after several steps need not agree closely for any
implementation, and this test does not ask it.

It asserts what must hold step by step, from a common state: step 1 from the same initial
state, and step 2 of one process from the 2-process run's state after step 1 (its
checkpoint, resumed). Each step's parameter update agrees in global norm within
`UPDATE_TOLERANCE` (above the measured jump of a few ReLU gates, 0.69 %; far below what a
per-device computation gives: BatchNorm statistics of each half of the batch instead of the
whole put the step-1 gradient 54 % off, same probe), and the BatchNorm running statistics
agree closely (forward values, continuous). The inner attack runs with a tiny ε and step
(`SMALL_ATTACK`): at the training ε one flipped gate also flips 25 of 24576 pixels of x_adv
(step 1's L_ori 3.1023 vs 3.0998; tests/test_attack_sharding.py has the step's inputs on 2
devices), a further jump this test need not include.

Measured (session 11, one run of this test): step 1's update agrees to 8.8e-4 in global norm
(parameters after it at most 2.8e-4 apart, sr1 `orthogonal_polar`), step 2's from the
common state to 2.7e-4; yet run from their own step-1 states, the parameters after step 2
are 0.0072 apart (sr0 `orthogonal_polar`): the amplification above, not a step-2 bug.
A second run (at 9213f09, 11 minutes on a loaded 2-core machine) passed: 8.76e-4 and
2.66e-4, BatchNorm statistics within the tolerance.
"""

import os
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax.checkpointing import load_variables
from siriib_jax.models import create_model
from tests.helpers import tiny_training_config, write_npz_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tests/helpers.tiny_training_config as command-line overrides of the quickstart config.
TINY = ["--config.dataset.name=npz", "--config.dataset.validation_size=10",
        "--config.model.width_multiplier=0.125", "--config.model.siriib.scales=(32, 16)",
        "--config.attack.steps=1", "--config.attack.unroll=False", "--config.eval_pgd_steps=1",
        "--config.batch_size=8", "--config.log_every_steps=1", "--config.final_eval_size=0",
        "--config.strategy=pgd_at", "--config.checkpoint_every_steps=1"]
# See the module docstring: x_adv moves by rounding-level flips of sign(∇) only this far.
SMALL_ATTACK = ["--config.attack.eps=1e-5", "--config.attack.step_size=1e-5"]
# Largest relative difference, in global norm, of one step's parameter update (module doc).
UPDATE_TOLERANCE = 0.05


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(workdir, data, max_steps, extra, env):
  command = [sys.executable, "main.py", "--config", "configs/quickstart.py",
             f"--workdir={workdir}", f"--config.dataset.data_dir={data}", *TINY, *SMALL_ATTACK,
             f"--config.max_steps={max_steps}", *extra]
  return subprocess.Popen(command, cwd=REPO, env={**os.environ, **env},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(*processes):
  for process in processes:
    output, _ = process.communicate(timeout=3000)
    assert process.returncode == 0, output[-3000:]


def _initial_params(data):
  """The runs' parameters before step 1 (`train.py`: the first of three keys of the seed)."""
  config = tiny_training_config(data)
  model = create_model(config.model, 32)
  init_key = jax.random.split(jax.random.key(0), 3)[0]
  return jax.jit(model.init)(init_key, jnp.zeros((1, 32, 32, 3)))["params"]


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(tree)])


def _assert_same_step(before, ours, reference, label):
  """Two runs' variables after one step from the same `before` params: updates that agree
  within UPDATE_TOLERANCE in global norm, and the same BatchNorm statistics."""
  start = _flat(before)
  update, reference_update = _flat(ours["params"]) - start, _flat(reference["params"]) - start
  relative = np.linalg.norm(update - reference_update) / np.linalg.norm(reference_update)
  print(f"{label}: update off by {relative:.2e} in global norm")
  assert relative < UPDATE_TOLERANCE, (label, relative)
  for a, b in zip(jax.tree.leaves(ours["batch_stats"]),
                  jax.tree.leaves(reference["batch_stats"])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=label)


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_process(tmp_path):
  data = write_npz_dataset(tmp_path / "data")
  # One compilation cache for all runs: the resumed single-process run compiles nothing.
  env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache")}
  port = _free_port()
  multi = [_run(tmp_path / "multi", data, 2,
                ["--multihost", f"--coordinator_address=localhost:{port}",
                 "--num_processes=2", f"--process_id={i}"], env) for i in range(2)]
  single = _run(tmp_path / "single", data, 1, [], env)
  _wait(*multi, single)
  assert (tmp_path / "multi" / "summary.json").exists()
  # The 2-process run's state after step 1: its workdir without the step-2 checkpoint.
  shutil.copytree(tmp_path / "multi", tmp_path / "resumed",
                  ignore=lambda folder, names: ["2"] if folder.endswith(
                      os.path.join("checkpoints", "last")) else [])
  multi_1, step = load_variables(str(tmp_path / "resumed"), "last")
  assert step == 1
  _wait(_run(tmp_path / "resumed", data, 2, [], env))
  multi_2, step = load_variables(str(tmp_path / "multi"), "last")
  assert step == 2
  single_1, step = load_variables(str(tmp_path / "single"), "last")
  assert step == 1
  single_2, step = load_variables(str(tmp_path / "resumed"), "last")
  assert step == 2
  _assert_same_step(_initial_params(data), multi_1, single_1, "step 1")
  _assert_same_step(multi_1["params"], multi_2, single_2, "step 2")
