"""Checkpoints across device counts and models: a state saved replicated over N devices
(as training saves it) is read on M devices by `load_variables` ('last' and 'best', the path
of --mode=eval and svd_study) and by the resume path, in both directions; a checkpoint of
another model or mode is refused with the key paths and shapes that differ.

The state is the project's `TrainState` with its real optimiser (`make_optimizer`) over a
small parameter tree named like the model's, so that each subprocess (forced CPU devices)
only imports and restores, without compiling a model.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from siriib_jax.checkpointing import CheckpointError, Checkpoints, load_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SMALL_STATE = """
import jax, numpy as np
from siriib_jax import parallel
from siriib_jax.checkpointing import Checkpoints, load_variables
from siriib_jax.training.optimizer import make_optimizer
from siriib_jax.training.state import TrainState
from tests.helpers import tiny_training_config


def small_state(orthogonal="orthogonal"):
  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  params = {"backbone": {"head": {"kernel": normal(8, 10), "bias": normal(10)}},
            "siriib": {"sr0": {orthogonal: {"kernel": normal(1, 1, 3, 12)}}}}
  batch_stats = {"backbone": {"stem_bn": {"mean": normal(8), "var": normal(8) ** 2}}}
  tx = make_optimizer(tiny_training_config("/unused"), steps_per_epoch=3)
  state = TrainState.create(apply_fn=None, params=params, tx=tx, batch_stats=batch_stats)
  return state.replace(step=np.int32(0))  # As `create_train_state`: an int32 array.


here = parallel.replicated(parallel.data_mesh())
"""

_HEADER = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count={devices}"
sys.path.insert(0, {repo!r})
import jax
assert jax.device_count() == {devices}, jax.devices()
"""

_SAVE = """
state = jax.device_put(small_state(), here)
assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == jax.device_count()
checkpoints = Checkpoints(WORKDIR, keep=2)
checkpoints.save_last(3, state)
checkpoints.save_best(3, state, 0.5)
checkpoints.close()
print("OK")
"""

_LOAD = """
expected = small_state()
for which in ("last", "best"):
  variables, step = load_variables(WORKDIR, which, expected={
      "params": expected.params, "batch_stats": expected.batch_stats})
  assert step == 3
  for name in ("params", "batch_stats"):
    for a, b in zip(jax.tree.leaves(variables[name]), jax.tree.leaves(getattr(expected, name)),
                    strict=True):
      np.testing.assert_array_equal(np.asarray(a), b)
      assert a.sharding.device_set == set(jax.devices()), a.sharding  # On this machine's.
# The resume path, with this machine's abstract state.
abstract = jax.tree.map(lambda l: jax.ShapeDtypeStruct(l.shape, l.dtype, sharding=here),
                        expected)
restored = Checkpoints(WORKDIR, keep=2).restore_latest(abstract)
assert int(restored.step) == 0
np.testing.assert_array_equal(restored.params["siriib"]["sr0"]["orthogonal"]["kernel"],
                              expected.params["siriib"]["sr0"]["orthogonal"]["kernel"])
print("OK")
"""


def _run(script: str, devices: int, workdir: str) -> None:
  """Runs `script` after `small_state` in a process with `devices` CPU devices."""
  script = (_HEADER.format(repo=REPO, devices=devices) + _SMALL_STATE +
            f"WORKDIR = {workdir!r}\n" + script)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, check=False, cwd=REPO)
  assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


@pytest.mark.parametrize("saved_on, loaded_on", [(2, 1), (1, 2)])
def test_a_checkpoint_written_on_n_devices_loads_on_m(tmp_path, saved_on, loaded_on):
  workdir = str(tmp_path / "run")
  _run(_SAVE, saved_on, workdir)
  _run(_LOAD, loaded_on, workdir)


def _small_state_module():
  """`small_state` and `here` of the scripts, on this process's devices."""
  namespace = {}
  exec(_SMALL_STATE, namespace)  # pylint: disable=exec-used
  return namespace


def test_another_mode_or_model_is_refused_with_what_differs(tmp_path):
  module = _small_state_module()
  checkpoints = Checkpoints(str(tmp_path), keep=1)
  checkpoints.save_last(3, jax.device_put(module["small_state"]("orthogonal_raw"),
                                         module["here"]))
  checkpoints.close()
  other = module["small_state"]("orthogonal")
  variables = {"params": other.params, "batch_stats": other.batch_stats}
  with pytest.raises(CheckpointError, match=r"only the checkpoint has "
                     r"params/siriib/sr0/orthogonal_raw/kernel \(1, 1, 3, 12\).*only the model "
                     r"has params/siriib/sr0/orthogonal/kernel \(1, 1, 3, 12\)"):
    load_variables(str(tmp_path), "last", expected=variables)
  # Without `expected` the variables load as saved.
  loaded, _ = load_variables(str(tmp_path), "last")
  assert "orthogonal_raw" in loaded["params"]["siriib"]["sr0"]
  # The resume path names the difference too, optimiser state included.
  with pytest.raises(CheckpointError, match=r"orthogonal_raw.*this run has "
                     r"params/siriib/sr0/orthogonal/kernel"):
    Checkpoints(str(tmp_path), keep=1).restore_latest(other)
  # Another shape (another number of classes): both shapes are named.
  bigger = jax.tree.map(lambda a: a, variables)
  bigger["params"]["backbone"]["head"]["kernel"] = np.zeros((8, 100), np.float32)
  saved = module["small_state"]("orthogonal_raw")
  bigger["params"]["siriib"] = saved.params["siriib"]
  with pytest.raises(CheckpointError, match=r"params/backbone/head/kernel: the checkpoint "
                     r"\(8, 10\) float32, the model \(8, 100\) float32"):
    load_variables(str(tmp_path), "last", expected=bigger)
