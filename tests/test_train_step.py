"""train_step: the fused step's guard, determinism, the strategies' hooks and validation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax.models import ModelOutput
from siriib_jax.training.strategies import get_strategy
from siriib_jax.training.state import create_train_state
from siriib_jax.training.step import make_eval_step, make_train_step

NUM_CLASSES = 4
IMAGE = (8, 8, 3)


class Tiny(nn.Module):
  """BatchNorm then a dense layer on 8×8×3 images: a `ModelOutput` without SiRIIB."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.BatchNorm(use_running_average=not train)(x.reshape(x.shape[0], -1))
    return ModelOutput(nn.Dense(NUM_CLASSES)(h))


def _setup(config, strategy="pgd_at"):
  config.strategy = strategy
  config.model.siriib.enabled = False
  config.model.num_classes = NUM_CLASSES
  config.attack.steps = 2
  config.attack.unroll = False
  model = Tiny()
  strategy = get_strategy(config)
  state = create_train_state(model, config, jax.random.key(0), IMAGE, steps_per_epoch=2,
                             num_train_examples=8, strategy=strategy)
  step = jax.jit(make_train_step(model, strategy, config, steps_per_epoch=2))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (4, *IMAGE), dtype=np.uint8)),
           "label": jnp.arange(4) % NUM_CLASSES, "index": jnp.array([0, 2, 4, 6])}
  return model, state, step, batch


def test_the_step_updates_parameters_and_statistics_and_is_deterministic(config):
  _, state, step, batch = _setup(config)
  first, metrics = step(state, batch, jax.random.key(1))
  again, _ = step(state, batch, jax.random.key(1))
  assert float(metrics["finite"]) == 1.0 and int(first.step) == 1
  for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(state.params)):
    assert not np.allclose(a, b)
  assert not np.allclose(first.batch_stats["BatchNorm_0"]["mean"],
                         state.batch_stats["BatchNorm_0"]["mean"])
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(metrics["learning_rate"], config.optimizer.learning_rate)


def test_a_non_finite_loss_skips_the_update_and_reports_it(config):
  _, state, step, batch = _setup(config)
  bad = state.replace(params=jax.tree.map(lambda p: p.at[(0,) * p.ndim].set(jnp.nan),
                                          state.params))
  after, metrics = step(bad, batch, jax.random.key(1))
  assert float(metrics["finite"]) == 0.0
  for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(bad)):
    np.testing.assert_array_equal(a, b)  # NaN positions compare equal here.


def test_te_updates_only_the_batchs_rows_of_the_ensemble(config):
  _, state, step, batch = _setup(config, "te")
  assert state.ensemble.shape == (8, NUM_CLASSES)
  after, _ = step(state, batch, jax.random.key(1))
  rows = np.asarray(after.ensemble)
  assert np.all(rows[[0, 2, 4, 6]].sum(axis=1) > 0)
  np.testing.assert_allclose(rows[[0, 2, 4, 6]].sum(axis=1), 1 - config.te_alpha, rtol=1e-5)
  np.testing.assert_array_equal(rows[[1, 3, 5, 7]], 0.0)


def test_awp_changes_the_update(config):
  _, state, plain_step, batch = _setup(config, "pgd_at")
  _, _, awp_step, _ = _setup(config, "awp_pgd_at")
  plain, _ = plain_step(state, batch, jax.random.key(1))
  awp, metrics = awp_step(state, batch, jax.random.key(1))
  assert float(metrics["finite"]) == 1.0
  kernel = lambda s: s.params["Dense_0"]["kernel"]
  assert not np.allclose(kernel(plain), kernel(awp))
  # The perturbation is small (γ = 5e-3 of each kernel), so is the difference.
  change = np.linalg.norm(kernel(plain) - kernel(state))
  assert np.linalg.norm(kernel(plain) - kernel(awp)) < change


@pytest.mark.parametrize("batch_norm", ["train", "eval"])
def test_the_inner_attack_never_updates_running_statistics(config, batch_norm):
  config.attack.batch_norm = batch_norm
  _, state, _, batch = _setup(config)
  model, strategy = Tiny(), get_strategy(config)

  def run(attack_calls_the_model: bool):
    def attack(logits_fn, x, y, key, clean_logits):
      if attack_calls_the_model:
        return x + 0.0 * logits_fn(x + 0.5).sum()  # A forward pass on other inputs.
      return x
    step = make_train_step(model, strategy.__class__(attack, strategy.loss), config, 2)
    return jax.jit(step)(state, batch, jax.random.key(1))[0].batch_stats

  for a, b in zip(jax.tree.leaves(run(True)), jax.tree.leaves(run(False))):
    np.testing.assert_array_equal(a, b)


def test_validation_counts_clean_and_robust_examples_over_the_mask(config):
  model, state, _, batch = _setup(config)
  eval_step = jax.jit(make_eval_step(model, config))
  batch = dict(batch, mask=jnp.array([1, 1, 1, 0]))
  counts = jax.device_get(eval_step(state, batch, jax.random.key(2)))
  assert counts["count"] == 3
  assert 0 <= counts["pgd"] <= counts["clean"] <= 3


def test_siriibs_clean_pass_leaves_the_backbones_statistics_to_x_adv(config):
  """PGD-AT with SiRIIB: `L_info`'s clean pass runs SiRIIB alone, so the backbone's running
  statistics take one update, from x_adv (as the plain model's), and SiRIIB's take two."""
  from siriib_jax.models import create_model  # pylint: disable=g-import-not-at-top
  config.strategy = "pgd_at"
  config.model.width_multiplier = 0.125
  config.model.siriib.scales = (16, 8)
  size = 16
  model = create_model(config.model, size)
  strategy = get_strategy(config)
  x_adv = jnp.full((4, size, size, 3), 0.25)
  step = make_train_step(model, strategy.__class__(lambda *_: x_adv, strategy.loss), config, 2)
  state = create_train_state(model, config, jax.random.key(0), (size, size, 3),
                             steps_per_epoch=2, num_train_examples=8, strategy=strategy)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8)),
           "label": jnp.arange(4) % 10, "index": jnp.arange(4)}
  after, metrics = jax.jit(step)(state, batch, jax.random.key(1))
  assert float(metrics["finite"]) == 1.0 and float(metrics["l_info"]) > 0
  assert float(metrics["f_spread"]) > 0  # Freshly initialised skip features vary with x.
  assert 0 <= float(metrics["ib_dead_fraction"]) < 1
  # c(·)'s last BatchNorm shifted far below 0: no unit of its ReLU is active for any image.
  params = jax.tree_util.tree_map(lambda a: a, state.params)
  extractor = params["siriib"]["extractor"]
  last = sorted(k for k in extractor if k.startswith("bn"))[-1]
  extractor[last]["bias"] = extractor[last]["bias"] - 1e4
  _, dead = jax.jit(step)(state.replace(params=params), batch, jax.random.key(1))
  assert float(dead["ib_dead_fraction"]) == 1.0 and float(dead["f_spread"]) < 1e-6
  _, once = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x_adv,
                        train=True, mutable=["batch_stats"])
  # Two programs (the jitted step, the model alone) reduce in different orders: equal to
  # float32 rounding (they differed by up to 1.6e-6 after test_conv.py's programs had run in
  # the same process); a second update of the statistics, from the clean images, moves them
  # by 0.04–0.19.
  for a, b in zip(jax.tree.leaves(after.batch_stats["backbone"]),
                  jax.tree.leaves(once["batch_stats"]["backbone"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  moved_twice = [not np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(after.batch_stats["siriib"]),
      jax.tree.leaves(once["batch_stats"]["siriib"]))]
  assert any(moved_twice)  # The clean images moved SiRIIB's statistics too.


def test_siriib_features_is_refused_without_siriib():
  from siriib_jax.models import create_model  # pylint: disable=g-import-not-at-top
  from siriib_jax.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config().model
  config.width_multiplier = 0.125
  config.siriib.enabled = False
  model = create_model(config, 16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match="no SiRIIB plug-in"):
    model.apply(variables, jnp.zeros((1, 16, 16, 3)), method="siriib_features")
