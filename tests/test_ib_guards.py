"""Guards of SiRIIB's IB path against collapse (`model.siriib.guard`): each keeps its
invariant, and a checkpoint of another guard is refused with a message naming the key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax import losses
from siriib_jax.checkpointing import CheckpointError, Checkpoints, load_variables
from siriib_jax.config_errors import ConfigError
from siriib_jax.configs import default
from siriib_jax.models import create_model


def _model(guard: str):
  config = default.get_config().model
  config.width_multiplier = 0.125
  config.siriib.scales = (16, 8)
  config.siriib.guard = guard
  model = create_model(config, 16)
  return model, model.init(jax.random.key(0), jnp.zeros((2, 16, 16, 3)))


def test_the_affine_free_guard_has_no_learned_scale_or_shift_before_cs_last_relu():
  _, variables = _model("affine_free_bn")
  extractor = variables["params"]["siriib"]["extractor"]
  assert "bn2" not in extractor and "bn2_affine_free" not in extractor  # No parameters.
  assert set(extractor) == {"conv0", "conv1", "conv2", "bn0", "bn1"}
  assert set(variables["batch_stats"]["siriib"]["extractor"]["bn2_affine_free"]) == {
      "mean", "var"}
  _, paper = _model("none")
  assert set(paper["params"]["siriib"]["extractor"]["bn2"]) == {"bias", "scale"}


def test_the_affine_free_guard_keeps_units_alive_where_the_papers_form_can_kill_them():
  """In train mode the affine-free BatchNorm centres every channel on the batch, so about
  half of each channel's values are > 0; the paper's BatchNorm with its shift far below 0
  leaves none."""
  x = np.random.default_rng(0).uniform(0, 1, (8, 16, 16, 3)).astype(np.float32)
  for guard, dead in (("affine_free_bn", 0.0), ("none", 1.0)):
    model, variables = _model(guard)
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    if guard == "none":
      params["siriib"]["extractor"]["bn2"]["bias"] -= 1e4
    _, state = model.apply({**variables, "params": params}, x, train=True,
                           mutable=["batch_stats", "intermediates"])
    h = state["intermediates"]["siriib"]["extractor_output"][0]
    assert float(losses.dead_unit_fraction(h)) == dead


def test_the_variance_hinge_is_zero_above_its_target_and_positive_below():
  rng = np.random.default_rng(0)
  wide = [jnp.asarray(rng.normal(0, 1.0, (64, 2, 2, 3)), jnp.float32)]
  assert float(losses.variance_hinge(wide, target=0.5)) == 0.0
  constant = [jnp.ones((8, 2, 2, 3)), jnp.zeros((8, 1, 1, 4))]
  # Std 0: each entry max(0, 0.5 − sqrt(1e-4)) = 0.49.
  np.testing.assert_allclose(losses.variance_hinge(constant, 0.5), 0.49, rtol=1e-6)
  # Its gradient pushes a feature below the target away from the batch mean.
  f = jnp.asarray([[0.0], [0.1]])[:, :, None, None]
  grad = jax.grad(lambda f: losses.variance_hinge([f], 1.0))(f)
  assert float(grad[0].squeeze()) > 0 > float(grad[1].squeeze())


def test_an_unknown_guard_is_refused_with_the_key():
  with pytest.raises(ConfigError, match="model.siriib.guard"):
    _model("dropout")


def test_a_checkpoint_of_another_guard_is_refused_naming_the_key(tmp_path):
  model, variables = _model("affine_free_bn")
  from siriib_jax.training.state import create_train_state
  from siriib_jax.training.strategies import get_strategy
  config = default.get_config()
  config.model.width_multiplier = 0.125
  config.model.siriib.scales = (16, 8)
  config.model.siriib.guard = "affine_free_bn"
  state = create_train_state(model, config, jax.random.key(0), (16, 16, 3), steps_per_epoch=2,
                             num_train_examples=8, strategy=get_strategy(config))
  checkpoints = Checkpoints(str(tmp_path), 1)
  checkpoints.save_last(1, state)
  checkpoints.close()
  paper, paper_variables = _model("none")
  with pytest.raises(CheckpointError, match=r"model\.siriib\.guard='affine_free_bn'"):
    load_variables(str(tmp_path), "last", expected=paper_variables)


def test_the_variance_guard_adds_its_weighted_hinge_to_the_step_loss():
  from siriib_jax.training.state import create_train_state
  from siriib_jax.training.step import make_train_step
  from siriib_jax.training.strategies import get_strategy
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)),
           "label": jnp.arange(4), "index": jnp.arange(4)}
  out = {}
  for guard in ("none", "variance"):
    config = default.get_config()
    config.strategy, config.attack.steps, config.attack.unroll = "pgd_at", 1, False
    config.model.width_multiplier = 0.125
    config.model.siriib.scales = (16, 8)
    config.model.siriib.guard = guard
    config.loss.variance_weight, config.loss.variance_target = 3.0, 10.0  # Below target.
    model = create_model(config.model, 16)
    strategy = get_strategy(config)
    state = create_train_state(model, config, jax.random.key(0), (16, 16, 3),
                               steps_per_epoch=2, num_train_examples=8, strategy=strategy)
    _, out[guard] = jax.jit(make_train_step(model, strategy, config, 2))(
        state, batch, jax.random.key(1))
  hinge = float(out["variance"]["variance_hinge"])
  assert "variance_hinge" not in out["none"] and hinge > 9.0
  np.testing.assert_allclose(out["variance"]["loss"], out["none"]["loss"] + 3.0 * hinge,
                             rtol=1e-5)
