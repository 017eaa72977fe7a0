"""strategies: the registry, each strategy's inner attack and loss, AWP and TE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax import losses
from siriib_jax.training import strategies
from siriib_jax.config_errors import ConfigError
from tests.linear_oracle import linear_logits

WEIGHTS = jax.random.normal(jax.random.key(0), (4 * 4 * 3, 5))
BIAS = jnp.zeros(5)


def _logits_fn(x):
  return linear_logits(WEIGHTS, BIAS, x)


@pytest.mark.parametrize("name", strategies.STRATEGY_NAMES)
def test_every_strategy_makes_x_adv_in_the_eps_ball_and_a_per_example_loss(config, name):
  config.strategy = name
  config.attack.steps = 2
  strategy = strategies.get_strategy(config)
  x = jax.random.uniform(jax.random.key(1), (6, 4, 4, 3))
  y = jnp.arange(6) % 5
  clean = _logits_fn(x) if strategy.attack_uses_clean else None
  x_adv = strategy.attack(_logits_fn, x, y, jax.random.key(2), clean)
  eps = config.attack.eps
  assert float(jnp.max(jnp.abs(x_adv - x))) <= eps + 1e-6
  assert float(jnp.min(x_adv)) >= 0 and float(jnp.max(x_adv)) <= 1
  assert float(jnp.max(jnp.abs(x_adv - x))) > eps / 2  # It moved.
  loss = strategy.loss(_logits_fn(x_adv), _logits_fn(x), y)
  assert loss.shape == (6,)
  # The adversarial loss is higher than the loss at x.
  assert float(jnp.mean(loss)) > float(jnp.mean(strategy.loss(_logits_fn(x), _logits_fn(x), y)))


def test_trades_loss_is_clean_cross_entropy_plus_beta_kl(config):
  config.strategy = "trades"
  strategy = strategies.get_strategy(config)
  adv, clean = jax.random.normal(jax.random.key(3), (2, 4, 5))
  y = jnp.array([0, 1, 2, 3])
  expected = losses.cross_entropy(clean, y) + config.trades_beta * losses.trades_kl(adv, clean)
  np.testing.assert_allclose(strategy.loss(adv, clean, y), expected, rtol=1e-6)
  assert strategy.needs_clean and strategy.attack_uses_clean


@pytest.mark.parametrize("name,awp,te", [("pgd_at", False, False), ("awp_pgd_at", True, False),
                                         ("awp_trades", True, False), ("te", False, True),
                                         ("fgsm_at", False, False)])
def test_each_strategy_carries_its_own_parts(config, name, awp, te):
  config.strategy = name
  strategy = strategies.get_strategy(config)
  assert (strategy.weight_perturbation is not None) == awp
  assert (strategy.ensemble is not None) == te


def test_an_unknown_strategy_is_named_with_a_suggestion(config):
  config.strategy = "pgd-at"
  with pytest.raises(ConfigError, match=r"config\.strategy .*did you mean 'pgd_at'"):
    strategies.get_strategy(config)


def test_awp_moves_each_kernel_by_gamma_times_its_norm_along_the_gradient():
  params = {"dense": {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.ones(2)},
            "bn": {"scale": jnp.ones(2)}}
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(4), p.shape), params)
  perturbed = strategies.WeightPerturbation(gamma=0.01)(params, grads)
  delta = perturbed["dense"]["kernel"] - params["dense"]["kernel"]
  np.testing.assert_allclose(jnp.linalg.norm(delta),
                             0.01 * jnp.linalg.norm(params["dense"]["kernel"]), rtol=1e-5)
  cosine = jnp.sum(delta * grads["dense"]["kernel"]) / (
      jnp.linalg.norm(delta) * jnp.linalg.norm(grads["dense"]["kernel"]))
  np.testing.assert_allclose(cosine, 1.0, rtol=1e-5)
  np.testing.assert_array_equal(perturbed["dense"]["bias"], params["dense"]["bias"])
  np.testing.assert_array_equal(perturbed["bn"]["scale"], params["bn"]["scale"])


def test_te_weight_ramps_up_from_zero_to_its_final_value():
  ensemble = strategies.TemporalEnsemble(alpha=0.9, weight=300.0, rampup_epochs=10)
  weights = [float(ensemble.weight_at(jnp.asarray(e))) for e in range(0, 15)]
  assert weights[0] == 0.0
  assert all(a <= b for a, b in zip(weights[1:], weights[2:]))
  np.testing.assert_allclose(weights[10:], 300.0)
  np.testing.assert_allclose(weights[5], 300.0 * np.exp(-5 * 0.25), rtol=1e-6)


def test_te_ensemble_averages_predictions_and_its_target_is_bias_corrected():
  te = strategies.TemporalEnsemble(alpha=0.9, weight=1.0, rampup_epochs=1)
  ensemble = te.init(4, 3)
  assert ensemble.shape == (4, 3) and float(jnp.abs(ensemble).sum()) == 0.0
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  index = jnp.array([1, 3])
  updated = te.update(ensemble, index, logits)
  np.testing.assert_allclose(updated[index], 0.1 * jax.nn.softmax(logits), rtol=1e-6)
  np.testing.assert_array_equal(updated[jnp.array([0, 2])], 0.0)
  # After one epoch the bias-corrected target is the prediction itself: no consistency loss.
  np.testing.assert_allclose(te.consistency(logits, updated, index, jnp.asarray(1)), 0.0,
                             atol=1e-7)
  assert float(te.consistency(-logits, updated, index, jnp.asarray(1)).min()) > 0
