"""FAB-T and Square on a linear classifier, whose exact robustness is known in closed form.

For logits = x·W + b and a wrong class j, the margin (w_y − w_j)·x' + b_y − b_j is separable
per pixel, so its minimum over the L∞ ball ∩ [0, 1] puts each pixel at the end of
[max(0, x − r), min(1, x + r)] that lowers it; a bisection on r gives the exact L∞ robust
radius r*. For L2 without the box, r*_j = margin_j / ‖w_y − w_j‖₂; this lower-bounds the
radius with the box and equals it when the minimiser x − margin_j (w_y − w_j) / ‖·‖² stays
in [0, 1].
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax.attacks.fab import fab_targeted, hyperplane_box_step
from siriib_jax.attacks.projections import per_example_norm
from siriib_jax.attacks.square import p_schedule, pseudo_gaussian_bump, side_schedule, square
from tests import linear_oracle

BATCH, HEIGHT, WIDTH, CHANNELS, CLASSES = 32, 8, 8, 3, 10
SHAPE = (BATCH, HEIGHT, WIDTH, CHANNELS)
KEY = jax.random.PRNGKey(0)
_k_w, _k_b, _k_linf, _k_l2 = jax.random.split(jax.random.PRNGKey(42), 4)
WEIGHTS = 0.1 * jax.random.normal(_k_w, (HEIGHT * WIDTH * CHANNELS, CLASSES))
BIAS = 0.1 * jax.random.normal(_k_b, (CLASSES,))
# L∞ data has many pixels at 0 or 1, where the box binds; L2 data stays inside [0.3, 0.7].
X_LINF = jnp.clip(1.4 * jax.random.uniform(_k_linf, SHAPE) - 0.2, 0.0, 1.0)
X_L2 = 0.3 + 0.4 * jax.random.uniform(_k_l2, SHAPE)


linear_logits = functools.partial(linear_oracle.linear_logits, WEIGHTS, BIAS)


def _labels(x):
  return jnp.argmax(linear_logits(x), axis=-1)


def _critical_eps(x, norm):
  return linear_oracle.critical_eps(np.asarray(WEIGHTS), np.asarray(BIAS), np.asarray(x),
                                    np.asarray(_labels(x)), norm)


@functools.cache
def linf_radius():
  """(B,) exact L∞ robust radius in the box (bisection)."""
  return _critical_eps(X_LINF, "linf")


@functools.cache
def l2_radius():
  """(B,) L2 radius without the box, and (B,) whether its minimiser lies in [0, 1]."""
  radii = _critical_eps(X_L2, "l2")
  y = np.asarray(_labels(X_L2))
  flat = np.asarray(X_L2, np.float64).reshape(BATCH, -1)
  w, b = np.asarray(WEIGHTS, np.float64), np.asarray(BIAS, np.float64)
  # The class j of the closest boundary, and the projection of x onto it.
  margins = (flat @ w + b)[np.arange(BATCH), y][:, None] - (flat @ w + b)
  gaps = w[:, y].T[:, :, None] - w[None]  # (B, D, K)
  distances = margins / (np.linalg.norm(gaps, axis=1) + 1e-30)
  distances[np.arange(BATCH), y] = np.inf
  j = np.argmin(distances, axis=1)
  gap = gaps[np.arange(BATCH), :, j]
  minimiser = flat - (margins[np.arange(BATCH), j] / np.sum(gap**2, axis=1))[:, None] * gap
  return radii, np.all((minimiser >= 0) & (minimiser <= 1), axis=1)


def _eps(norm):
  """ε at the median radius, so that about half the points are robust."""
  return float(np.median(linf_radius() if norm == "linf" else l2_radius()[0]))


@functools.cache
def compiled(name, norm, restarts=1):
  """The jitted attack `(x, y, key) -> AttackResult` at ε = `_eps(norm)`.

  With restarts (used to check the key), FAB runs fewer steps to keep the test fast.
  """
  eps = _eps(norm)
  if name == "fab":
    attack = fab_targeted(eps, norm=norm, restarts=restarts, steps=100 if restarts == 1 else 20)
  else:
    attack = square(eps, norm=norm, queries=1000, restarts=restarts)
  return jax.jit(functools.partial(attack, linear_logits))


def data(norm):
  x = X_LINF if norm == "linf" else X_L2
  return x, _labels(x)


@functools.cache
def run(name, norm):
  """(x, y, ε, result) of the single-restart attack on the data of its norm."""
  x, y = data(norm)
  return x, y, _eps(norm), jax.device_get(compiled(name, norm)(x, y, KEY))


ATTACKS = [("fab", "linf"), ("fab", "l2"), ("square", "linf"), ("square", "l2")]


@pytest.mark.parametrize("name,norm", ATTACKS)
def test_threat_model_and_success_flags(name, norm):
  x, y, eps, result = run(name, norm)
  chex.assert_shape(result.x_adv, SHAPE)
  chex.assert_shape(result.success, (BATCH,))
  assert result.success.dtype == bool
  assert np.all(result.x_adv >= 0.0) and np.all(result.x_adv <= 1.0)
  assert np.all(per_example_norm(result.x_adv - x, norm) <= eps * (1 + 1e-5))
  np.testing.assert_array_equal(result.success,
                                np.argmax(linear_logits(result.x_adv), axis=-1) != y)
  assert 0 < result.success.sum() < BATCH


@pytest.mark.parametrize("name,norm", [("fab", "l2"), ("square", "linf")])
def test_deterministic_for_a_key(name, norm):
  attack = compiled(name, norm, restarts=2)
  x, y = data(norm)
  first, again, other_key = (jax.device_get(attack(x, y, jax.random.PRNGKey(seed)))
                             for seed in (1, 1, 2))
  np.testing.assert_array_equal(first.x_adv, again.x_adv)
  np.testing.assert_array_equal(first.success, again.success)
  if name == "square":  # FAB's random restarts rarely beat its first run on a linear model.
    assert not np.array_equal(first.x_adv, other_key.x_adv)


def test_fab_linf_finds_the_exact_robust_radius():
  x, _, eps, result = run("fab", "linf")
  radius = linf_radius()
  clear = np.abs(radius / eps - 1) > 0.01  # Points with r* within 1% of ε may go either way.
  assert clear.sum() >= BATCH - 4
  np.testing.assert_array_equal(result.success[clear], radius[clear] <= eps)
  # Where it succeeds, FAB is minimal: its perturbation is close to r* (steps overshoot ~5%).
  found = np.asarray(per_example_norm(result.x_adv - x, "linf"))[result.success]
  assert np.all(found >= radius[result.success] * (1 - 1e-4))
  assert np.all(found <= radius[result.success] * 1.1)


def test_fab_l2_finds_the_exact_robust_radius_inside_the_box():
  x, _, eps, result = run("fab", "l2")
  radius, in_box = l2_radius()
  clear = in_box & (np.abs(radius / eps - 1) > 0.01)
  assert clear.sum() >= BATCH // 2
  np.testing.assert_array_equal(result.success[clear], radius[clear] <= eps)
  found = np.asarray(per_example_norm(result.x_adv - x, "l2"))[result.success]
  assert np.all(found >= radius[result.success] * (1 - 1e-4))
  assert np.all(found <= radius[result.success] * 1.1)


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


@pytest.mark.parametrize("restarts", [1, 2])
def test_fab_single_targets_add_up_to_the_call_over_all_targets(restarts):
  """`single_target(rank)` makes exactly the runs of that rank in the full call (AutoAttack
  calls it rank by rank): a point is broken by the full call iff by some rank alone."""
  norm, n_targets = "l2", 3
  x, y = data(norm)
  attack = fab_targeted(_eps(norm), norm=norm, restarts=restarts, steps=20,
                        n_target_classes=n_targets)
  everything = jax.jit(functools.partial(attack, linear_logits))(x, y, KEY)
  single = jax.jit(functools.partial(attack.single_target, linear_logits))
  by_rank = [np.asarray(single(x, y, KEY, np.int32(rank)).success)
             for rank in range(1, n_targets + 1)]
  assert by_rank[0].any() and not by_rank[0].all()
  np.testing.assert_array_equal(np.asarray(everything.success), np.any(by_rank, axis=0))


def _smallest_box_step(p, w, r, norm):
  """NumPy oracle for `hyperplane_box_step`: w·d as a function of the step length τ is
  piecewise linear between the knees, so τ is an interpolation between knee values."""
  direction = np.sign(w) * np.where(r < 0, -1.0, 1.0)[:, None]
  room = np.where(direction > 0, 1.0 - p, p)
  abs_w = np.abs(w)
  speed = np.ones_like(w) if norm == "linf" else abs_w
  knee = np.where(abs_w * speed > 0, room / np.where(speed > 0, speed, 1.0), 0.0)
  steps = []
  for i in range(len(p)):
    taus = np.unique(np.concatenate([[0.0], knee[i]]))
    reached = np.sum(abs_w[i] * np.minimum(taus[:, None] * speed[i], room[i]), axis=1)
    tau = np.interp(abs(r[i]), reached, taus)  # Beyond the last knee: the box corner.
    steps.append(direction[i] * np.minimum(tau * speed[i], room[i]))
  return np.stack(steps)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_hyperplane_box_step_is_the_smallest_step_in_the_box(norm, scale):
  rng = np.random.default_rng(0)
  p = np.clip(rng.uniform(-0.2, 1.2, (16, 50)), 0, 1)  # Some coordinates on the faces.
  w = rng.normal(size=(16, 50)) * (rng.uniform(size=(16, 50)) > 0.1)  # Some zero weights.
  r = scale * rng.normal(size=16)
  d = np.asarray(jax.jit(hyperplane_box_step, static_argnums=3)(
      jnp.asarray(p, jnp.float32), jnp.asarray(w, jnp.float32), jnp.asarray(r, jnp.float32),
      norm), np.float64)
  np.testing.assert_allclose(d, _smallest_box_step(p, w, r, norm), atol=2e-5)
  assert np.all(p + d >= -1e-6) and np.all(p + d <= 1 + 1e-6)
