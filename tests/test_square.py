"""Square Attack (Andriushchenko et al. 2020) on any image shape: H ≠ W and sides under 5,
under L∞ and L2, against the exact critical ε of a linear model (`linear_oracle`); its L2
initialisation and proposals never divide by a zero norm; a NaN margin is an error. On the
linear classifier of `tests/linear_attacks.py`: the threat model, soundness, and the p and
side schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax.attacks.projections import per_example_norm
from siriib_jax.attacks.square import (_l2_init, _l2_proposal, p_schedule, pseudo_gaussian_bump,
                                       side_schedule, square)
from tests import linear_attacks
from tests.helpers import linear_problem
from tests.linear_attacks import BATCH, compiled, data, l2_radius, linf_radius, run
from tests.linear_oracle import linear_logits

# Shapes on which the L2 initialisation crashed (64 × 4) or was zero, hence NaN (32 × 6,
# 2 × 32), plus a single row and a single pixel.
SHAPES = [(64, 4), (32, 6), (2, 32), (1, 7), (1, 1), (32, 32)]


def _size(delta, norm):
  flat = np.asarray(delta, np.float64).reshape(len(delta), -1)
  return np.abs(flat).max(axis=1) if norm == "linf" else np.linalg.norm(flat, axis=1)


@pytest.mark.parametrize("rows, cols", [(1, 1), (1, 6), (6, 1), (2, 7), (6, 6), (5, 12)])
def test_rectangular_bump_is_unit_and_signed_by_halves(rows, cols):
  bump = pseudo_gaussian_bump(rows, cols)
  assert bump.shape == (rows, cols)
  np.testing.assert_allclose(np.linalg.norm(bump), 1.0, rtol=1e-6)
  assert np.all(bump[:rows // 2] > 0) and np.all(bump[rows // 2:] < 0)
  with pytest.raises(ValueError, match="at least one row"):
    pseudo_gaussian_bump(0, cols)


@pytest.mark.parametrize("height, width", SHAPES)
def test_l2_start_and_proposal_have_norm_eps_on_any_shape(height, width):
  """Away from the box's faces nothing is clipped, so both must have ‖δ‖₂ = ε exactly; the
  proposal is made from a zero perturbation (x_best = x), whose normalisation must give 0,
  not NaN."""
  eps, batch = 0.05, 4
  x = jnp.full((batch, height, width, 3), 0.5)
  start = jax.jit(_l2_init, static_argnums=2)(jax.random.key(0), x, eps)
  np.testing.assert_allclose(_size(start - x, "l2"), eps, rtol=1e-5)
  side = min(height, width, 3)
  bump = jnp.asarray(pseudo_gaussian_bump(side))
  proposal = jax.jit(_l2_proposal, static_argnums=5)(jax.random.key(1), x, x,
                                                     jnp.asarray(side), bump, eps)
  np.testing.assert_allclose(_size(proposal - x, "l2"), eps, rtol=1e-5)


# "Clearly below ε": Square is a random search, not an exact attack. On a linear model
# with unstructured weights its L∞ squares reach the optimal vertex pixel by pixel, but its
# L2 bumps align with the weights only partly (as in test_fab_square), so every point must
# be broken from a critical ε of ε / 1.5 (L∞) or ε / 2 (L2) down. Only such points are
# attacked (the search stops once all are broken); that no point goes beyond the oracle
# follows from x_adv being in the threat model and `success` being a misclassification.
CLEARLY_BELOW = {"linf": 1.5, "l2": 2.0}


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("height, width", [(64, 4), (32, 6), (2, 32)])
def test_square_breaks_every_clearly_non_robust_point_on_any_shape(height, width, norm):
  w, b, x, y, eps, critical = linear_problem(10, norm, n=64, shape=(height, width, 3), seed=1,
                                             eps_quantile=0.75)
  clear = critical <= eps / CLEARLY_BELOW[norm]
  assert clear.sum() >= 16, clear.sum()  # Enough points for the check to mean something.
  x, y = x[clear][:16], y[clear][:16]
  logits_fn = jax.tree_util.Partial(linear_logits, jnp.asarray(w), jnp.asarray(b))
  result = jax.jit(square(eps, norm, queries=5000))(logits_fn, x, y, jax.random.key(0))
  success, x_adv = np.asarray(result.success), np.asarray(result.x_adv)
  assert np.all(np.isfinite(x_adv)) and x_adv.min() >= 0 and x_adv.max() <= 1
  assert np.all(_size(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-7)
  np.testing.assert_array_equal(success, np.argmax(logits_fn(x_adv), axis=1) != y)
  assert success.all(), np.flatnonzero(~success)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_nan_margin_is_an_error(norm):
  w, b, x, y, eps, _ = linear_problem(10, norm, n=8, shape=(4, 6, 3))

  def logits_fn(images):  # NaN logits for the third image, whatever the perturbation.
    logits = linear_logits(jnp.asarray(w), jnp.asarray(b), images)
    return jnp.where((jnp.arange(len(images)) == 2)[:, None], jnp.nan, logits)

  with pytest.raises(Exception, match=r"margin .* is NaN for 1 of 8 points \(indices \[2\]\)"):
    result = jax.jit(square(eps, norm, queries=20), static_argnums=0)(logits_fn, x, y,
                                                                       jax.random.key(0))
    np.asarray(result.success)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_iteration_minus_one_is_the_initial_perturbation(norm):
  """`advance` from `fresh_state` over iteration −1 alone gives the initial perturbation
  (L∞: vertical stripes x ± ε; L2: norm ε) and its margin; running on from there in two
  segments gives the state of one segment."""
  w, b, x, y, eps, _ = linear_problem(10, norm, n=6, shape=(8, 8, 3))
  x = np.clip(np.asarray(x), 2 * eps, 1 - 2 * eps) if norm == "linf" else np.asarray(x)
  logits_fn = lambda images: linear_logits(jnp.asarray(w), jnp.asarray(b), images)
  attack = square(eps, norm, queries=30)
  advance = jax.jit(attack.advance, static_argnums=0)
  key = jax.random.key(3)
  first = advance(logits_fn, x, y, key, 0, attack.fresh_state(x), -1, 0)
  delta = np.asarray(first.x) - x
  if norm == "linf":
    np.testing.assert_allclose(np.abs(delta), eps, rtol=1e-5)
    np.testing.assert_array_equal(np.sign(delta), np.sign(delta[:, :1]).repeat(8, axis=1))
  else:
    np.testing.assert_allclose(_size(delta, "l2"), eps, rtol=1e-4)
  np.testing.assert_allclose(first.margin, attack.margin(logits_fn(first.x), y), rtol=1e-6)
  whole = advance(logits_fn, x, y, key, 0, attack.fresh_state(x), -1, 30)
  split = advance(logits_fn, x, y, key, 0, first, 0, 12)
  split = advance(logits_fn, x, y, key, 0, split, 12, 30)
  for a, c in zip(whole, split):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_bad_hyper_parameters_are_refused():
  for kwargs, message in [(dict(queries=0), "queries"), (dict(restarts=0), "restarts"),
                          (dict(p_init=0.0), "p_init"), (dict(p_init=1.5), "p_init")]:
    with pytest.raises(ValueError, match=message):
      square(0.1, "l2", **kwargs)


ATTACKS = [("square", "linf"), ("square", "l2")]


@pytest.mark.parametrize("name,norm", ATTACKS)
def test_threat_model_and_success_flags(name, norm):
  linear_attacks.assert_in_threat_model_with_true_flags(name, norm)


@pytest.mark.parametrize("name,norm", [("square", "linf")])
def test_deterministic_for_a_key(name, norm):
  attack = compiled(name, norm, restarts=2)
  x, y = data(norm)
  first, again, other_key = (jax.device_get(attack(x, y, jax.random.PRNGKey(seed)))
                             for seed in (1, 1, 2))
  np.testing.assert_array_equal(first.x_adv, again.x_adv)
  np.testing.assert_array_equal(first.success, again.success)
  assert not np.array_equal(first.x_adv, other_key.x_adv)  # The key drives the search.


# Random search on a linear model with unstructured weights is hard for L2 bumps, hence the
# smaller "easy" radius there.
@pytest.mark.parametrize("norm,easy_radius", [("linf", 0.8), ("l2", 0.5)])
def test_square_is_sound_and_finds_most_non_robust_points(norm, easy_radius):
  _, _, eps, result = run("square", norm)
  radius = linf_radius() if norm == "linf" else l2_radius()[0]
  assert not np.any(result.success & (radius > eps))  # r* lower-bounds the true L2 radius.
  easy = radius <= easy_radius * eps
  assert easy.sum() >= BATCH // 4
  assert result.success[easy].mean() >= 0.8


def test_p_schedule_halves_at_the_rescaled_iterations():
  p = p_schedule(10000, 0.8)
  np.testing.assert_allclose(p[[0, 10, 11, 50, 51, 1000, 1001, 8000, 8001, 9999]],
                             0.8 / 2.0**np.array([0, 0, 1, 1, 2, 4, 5, 8, 9, 9]))
  rescaled = p_schedule(5000, 0.8)
  np.testing.assert_allclose(rescaled[[5, 6, 4000, 4001]], 0.8 / 2.0**np.array([0, 1, 8, 9]))
  assert side_schedule(5000, 0.8, 32, 32, "linf")[0] == 29  # round(√(0.8 · 32 · 32)).
  l2_sides = side_schedule(5000, 0.8, 32, 32, "l2")
  assert np.all(l2_sides % 2 == 1) and l2_sides.min() == 3


@pytest.mark.parametrize("side", [1, 3, 5, 7])  # L2 Square uses odd sides.
def test_pseudo_gaussian_bump(side):
  bump = pseudo_gaussian_bump(side)
  np.testing.assert_allclose(np.linalg.norm(bump), 1.0, rtol=1e-6)
  assert np.all(bump[:side // 2] > 0) and np.all(bump[side // 2:] < 0)
  np.testing.assert_allclose(bump, bump[:, ::-1])  # Symmetric about the central column.
  bottom = np.abs(bump[side // 2:])
  assert np.argmax(bottom) == np.ravel_multi_index(((side - side // 2) // 2, side // 2),
                                                   bottom.shape)  # Peak at the centre.
