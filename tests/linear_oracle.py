"""Exact robustness of a linear classifier `logits = flatten(x) · W + b`, for attack tests.

L∞ ball ∩ [0, 1]: for each wrong class j the margin `m_j(x') = (w_y − w_j) · x' + b_y − b_j`
is linear, so its minimum over the box `[max(0, x − ε), min(1, x + ε)]` is separable: each
pixel sits at whichever end decreases `(w_y − w_j)_i x'_i`. The point is robust iff every
worst margin stays > 0.

L2 ball (no box): `min_{‖δ‖₂ ≤ ε} m_j(x + δ) = m_j(x) − ε ‖w_y − w_j‖₂`. With the box the
attacker can only do worse, so this is exact only when the ball lies inside [0, 1]ᴰ, i.e.
ε ≤ min(x, 1 − x) per pixel; the tests keep to such points.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def linear_logits(w, b, x):
  """Logits (B, K) of x (B, H, W, C) for weights (D, K) and biases (K,); NumPy or JAX."""
  return x.reshape(x.shape[0], -1) @ w + b


def _weight_gaps(w, y):
  """(B, D, K): w_y − w_j for every example and class j."""
  return w.T[y][:, :, None] - w[None]


def worst_margins_linf(w, b, x, y, eps):
  """(B, K) `min_{x' ∈ ball ∩ box} z_y(x') − z_j(x')`; +inf for j = y."""
  flat = x.reshape(x.shape[0], -1).astype(np.float64)
  low, high = np.maximum(flat - eps, 0.0), np.minimum(flat + eps, 1.0)
  gaps = _weight_gaps(w.astype(np.float64), y)
  worst = np.minimum(gaps * low[:, :, None], gaps * high[:, :, None]).sum(axis=1)
  margins = worst + (b[y][:, None] - b[None])
  margins[np.arange(len(y)), y] = np.inf
  return margins


def worst_margins_l2(w, b, x, y, eps):
  """(B, K) `min_{‖δ‖₂ ≤ ε} z_y(x + δ) − z_j(x + δ)` (no box); +inf for j = y."""
  flat = x.reshape(x.shape[0], -1).astype(np.float64)
  logits = flat @ w + b
  gaps = _weight_gaps(w.astype(np.float64), y)
  margins = logits[np.arange(len(y)), y][:, None] - logits - eps * np.linalg.norm(gaps, axis=1)
  margins[np.arange(len(y)), y] = np.inf
  return margins


def robust(w, b, x, y, eps, norm):
  """(B,) bool: no point of the threat model changes the prediction away from y."""
  margins = {"linf": worst_margins_linf, "l2": worst_margins_l2}[norm](w, b, x, y, eps)
  return margins.min(axis=1) > 0


def critical_eps(w, b, x, y, norm, iterations: int = 40):
  """(B,) the smallest ε at which each point stops being robust (bisection for L∞ with the
  box; closed form for L2 without it)."""
  if norm == "l2":
    gap_norms = np.linalg.norm(_weight_gaps(w.astype(np.float64), y), axis=1)
    gap_norms[np.arange(len(y)), y] = 1.0
    return (worst_margins_l2(w, b, x, y, 0.0) / gap_norms).min(axis=1)
  low, high = np.zeros((len(y), 1)), np.ones((len(y), 1))
  for _ in range(iterations):
    mid = (low + high) / 2
    is_robust = worst_margins_linf(w, b, x, y, mid).min(axis=1, keepdims=True) > 0
    low, high = np.where(is_robust, mid, low), np.where(is_robust, high, mid)
  return low[:, 0]


# A random linear problem shared by the attack tests.

SHAPE, CLASSES = (4, 4, 3), 10
BAND = 0.1  # Points whose critical ε is within 10 % of ε are left out (see `random_problem`).


@functools.lru_cache(maxsize=None)
def random_problem(norm: str, n: int = 256, seed: int = 0):
  """A random linear 10-class model, n correctly classified points and ε (its median
  critical ε, so robust accuracy ≈ 50 %).

  Points whose critical ε lies within ±BAND·ε are dropped: there CE-based attacks, whose
  optimum is not the margin's, may fall short by a hair while the oracle is exact. For L2
  the points lie in [0.3, 0.7] and ε ≤ 0.3, so the ball is inside the box and the
  closed form without the box is exact; L∞ is tested with the box.
  """
  rng = np.random.default_rng(seed)
  dim = int(np.prod(SHAPE))
  w = rng.normal(size=(dim, CLASSES)).astype(np.float32)
  b = rng.normal(size=CLASSES).astype(np.float32)
  low = 0.3 if norm == "l2" else 0.0
  x = rng.uniform(low, 1 - low, size=(3 * n,) + SHAPE).astype(np.float32)
  y = np.argmax(x.reshape(len(x), -1) @ w + b, axis=1)
  critical = critical_eps(w, b, x, y, norm)
  eps = float(np.median(critical))
  keep = np.flatnonzero(np.abs(critical / eps - 1) > BAND)[:n]
  assert len(keep) == n and (norm == "linf" or eps <= 0.3)
  return w, b, x[keep], y[keep], eps


def partial_logits(w, b):
  return jax.tree_util.Partial(linear_logits, jnp.asarray(w), jnp.asarray(b))


def in_threat_model(x_adv, x, eps, norm):
  x_adv, x = np.asarray(x_adv, np.float64), np.asarray(x, np.float64)
  delta = (x_adv - x).reshape(len(x), -1)
  size = np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
  return (size <= eps * (1 + 1e-5) + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
