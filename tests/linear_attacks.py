"""A linear classifier whose exact robustness is known in closed form, and FAB-T and Square
run on it: shared by `test_fab.py` and `test_square.py`.

For logits = x·W + b and a wrong class j, the margin (w_y − w_j)·x' + b_y − b_j is separable
per pixel, so its minimum over the L∞ ball ∩ [0, 1] puts each pixel at the end of
[max(0, x − r), min(1, x + r)] that lowers it; a bisection on r gives the exact L∞ robust
radius r*. For L2 without the box, r*_j = margin_j / ‖w_y − w_j‖₂; this lower-bounds the
radius with the box and equals it when the minimiser x − margin_j (w_y − w_j) / ‖·‖² stays
in [0, 1].
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from siriib_jax.attacks.fab import fab_targeted
from siriib_jax.attacks.projections import per_example_norm
from siriib_jax.attacks.square import square
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


def labels(x):
  return jnp.argmax(linear_logits(x), axis=-1)


def critical_eps(x, norm):
  return linear_oracle.critical_eps(np.asarray(WEIGHTS), np.asarray(BIAS), np.asarray(x),
                                    np.asarray(labels(x)), norm)


@functools.cache
def linf_radius():
  """(B,) exact L∞ robust radius in the box (bisection)."""
  return critical_eps(X_LINF, "linf")


@functools.cache
def l2_radius():
  """(B,) L2 radius without the box, and (B,) whether its minimiser lies in [0, 1]."""
  radii = critical_eps(X_L2, "l2")
  y = np.asarray(labels(X_L2))
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


def median_eps(norm):
  """ε at the median radius, so that about half the points are robust."""
  return float(np.median(linf_radius() if norm == "linf" else l2_radius()[0]))


@functools.cache
def compiled(name, norm, restarts=1):
  """The jitted attack `(x, y, key) -> AttackResult` at ε = `median_eps(norm)`.

  With restarts (used to check the key), FAB runs fewer steps to keep the test fast.
  """
  eps = median_eps(norm)
  if name == "fab":
    attack = fab_targeted(eps, norm=norm, restarts=restarts, steps=100 if restarts == 1 else 20)
  else:
    attack = square(eps, norm=norm, queries=1000, restarts=restarts)
  return jax.jit(functools.partial(attack, linear_logits))


def data(norm):
  x = X_LINF if norm == "linf" else X_L2
  return x, labels(x)


@functools.cache
def run(name, norm):
  """(x, y, ε, result) of the single-restart attack on the data of its norm."""
  x, y = data(norm)
  return x, y, median_eps(norm), jax.device_get(compiled(name, norm)(x, y, KEY))


def assert_in_threat_model_with_true_flags(name, norm):
  """The attack's x_adv lie in [0, 1] and the ε-ball, its success flags are exactly the
  misclassified x_adv, and it succeeds on some points but not all."""
  x, y, eps, result = run(name, norm)
  assert result.x_adv.shape == SHAPE and result.success.shape == (BATCH,)
  assert result.success.dtype == bool
  assert np.all(result.x_adv >= 0.0) and np.all(result.x_adv <= 1.0)
  assert np.all(per_example_norm(result.x_adv - x, norm) <= eps * (1 + 1e-5))
  np.testing.assert_array_equal(result.success,
                                np.argmax(linear_logits(result.x_adv), axis=-1) != y)
  assert 0 < result.success.sum() < BATCH
