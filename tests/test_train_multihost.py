"""train with several processes (`--multihost`): two CPU processes joined by
`jax.distributed.initialize` over loopback (gloo collectives), one device each, train the
same steps as one process with one device and the same global batch. Slow (three
compilations of the step at once): `pytest -m slow`.

The reference is one device, not one process with two forced CPU devices: that run stops in
its first step on the 2-core machines here (also at b2085f3, before session 8; docs/status.md).

The inner attack runs with a tiny ε and step (`SMALL_ATTACK`): data-parallel sums are added
in another order on 2 devices than on 1, so activations differ by float rounding (~1e-6),
and PGD's sign step and the ReLUs are discontinuous there. Measured at the training ε
(8/255) for ResNet-18-SR: one ReLU gate of the backbone (stage3_block1, a pre-activation of
2e-6 on 1 device, -6e-7 on 2) flips for one example, its input gradient moves by 1.7 % of
its largest component, 25 of 24576 x_adv pixels step the other way (2α), L_ori of step 1
moves by 1e-3 and after 2 steps parameters differ by a few per cent; the same x_adv comes
out of 2 processes and of 2 forced devices in one process, and evaluated on the same x_adv
the losses agree to 1e-5 (tests/test_attack_sharding.py: the step's inputs on 2 devices).
With a tiny ε such flips move pixels by ~1e-5 and the two runs must agree to rounding; the
batches, the keys and every other part of the step are the same as at the training ε.
Status (measured with this ε): step 1's metrics agree to 1e-6, yet after 2 steps the
parameters differ (largest: sr0/sr1 `orthogonal_polar` kernels, 0.007 absolute), so this
test still fails; the cause is not yet found.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from siriib_jax.checkpointing import load_variables
from tests.helpers import write_npz_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tests/helpers.tiny_training_config as command-line overrides of the quickstart config.
TINY = ["--config.dataset.name=npz", "--config.dataset.validation_size=10",
        "--config.model.width_multiplier=0.125", "--config.model.siriib.scales=(32, 16)",
        "--config.attack.steps=1", "--config.attack.unroll=False", "--config.eval_pgd_steps=1",
        "--config.batch_size=8", "--config.max_steps=2", "--config.log_every_steps=1",
        "--config.final_eval_size=0", "--config.strategy=pgd_at"]
# See the module docstring: x_adv moves by rounding-level flips of sign(∇) only this far.
SMALL_ATTACK = ["--config.attack.eps=1e-5", "--config.attack.step_size=1e-5"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(workdir, data, extra, env):
  command = [sys.executable, "main.py", "--config", "configs/quickstart.py",
             f"--workdir={workdir}", f"--config.dataset.data_dir={data}", *TINY, *SMALL_ATTACK,
             *extra]
  return subprocess.Popen(command, cwd=REPO, env={**os.environ, **env},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_processes_train_as_one_process(tmp_path):
  data = write_npz_dataset(tmp_path / "data")
  port = _free_port()
  multi = [_run(tmp_path / "multi", data,
                ["--multihost", f"--coordinator_address=localhost:{port}",
                 "--num_processes=2", f"--process_id={i}"], {}) for i in range(2)]
  single = _run(tmp_path / "single", data, [], {})
  for process in (*multi, single):
    output, _ = process.communicate(timeout=3000)
    assert process.returncode == 0, output[-3000:]
  ours, step = load_variables(str(tmp_path / "multi"), "last")
  reference, reference_step = load_variables(str(tmp_path / "single"), "last")
  assert step == reference_step == 2
  # Equal up to the order of summation across devices (see the 8-device test of train.py).
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  assert (tmp_path / "multi" / "summary.json").exists()
