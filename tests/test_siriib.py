"""`model.siriib.orthogonality` at the model level (issue 14): both modes have the SPEC §6
counts, a checkpoint of one mode is refused by the other, and a bad value is a clear error."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax.checkpointing import CheckpointError, Checkpoints
from siriib_jax.complexity import count_complexity
from siriib_jax.config_errors import ConfigError
from siriib_jax.models import SRBlock, create_model


@pytest.mark.parametrize("name,params_m,macs_g", [("resnet18", 11.35, 0.73),
                                                   ("wrn28_10", 36.79, 5.57)])
def test_both_orthogonality_modes_have_the_spec_counts(config, name, params_m, macs_g):
  config.model.name = name
  counts = {}
  for mode in ("penalty", "exact"):
    config.model.siriib.orthogonality = mode
    counts[mode] = count_complexity(create_model(config.model, 32), 32)
  assert counts["exact"] == counts["penalty"]
  assert abs(counts["exact"].params / 1e6 - params_m) <= 0.015
  assert abs(counts["exact"].macs / 1e9 - macs_g) <= 0.02


@flax.struct.dataclass
class _State:
  params: dict
  batch_stats: dict


def _sr_state(orthogonality: str) -> _State:
  variables = SRBlock(orthogonality=orthogonality).init(
      jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  return _State({"siriib": {"sr0": variables["params"]}},
                {"siriib": {"sr0": variables["batch_stats"]}})


def _abstract(state):
  return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), state)


@pytest.mark.parametrize("saved,restored", [("penalty", "exact"), ("exact", "penalty")])
def test_a_checkpoint_of_one_mode_is_refused_by_the_other(tmp_path, saved, restored):
  state = _sr_state(saved)
  checkpoints = Checkpoints(str(tmp_path), keep=1)
  checkpoints.save_last(1, state)
  checkpoints.close()

  checkpoints = Checkpoints(str(tmp_path), keep=1)
  same = checkpoints.restore_latest(_abstract(state))  # The control: the same mode loads.
  jax.tree.map(np.testing.assert_array_equal, same.params, state.params)
  with pytest.raises(CheckpointError, match="orthogonal"):
    checkpoints.restore_latest(_abstract(_sr_state(restored)))
  checkpoints.close()


def test_a_misspelt_orthogonality_is_a_config_error_naming_the_closest(config):
  config.model.siriib.orthogonality = "exakt"
  with pytest.raises(ConfigError, match=r"model\.siriib\.orthogonality.*did you mean 'exact'"):
    create_model(config.model, 32)
