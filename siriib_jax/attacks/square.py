"""Square Attack, a score-based random search (Andriushchenko et al., ECCV 2020).

"Square Attack: a query-efficient black-box adversarial attack via random search":
Algorithm 1 (the random search, accepting a proposal when the margin loss
`z_y − max_{j≠y} z_j` decreases), Algorithm 2 for L∞ (vertical-stripe initialisation; a
random square of side s set to x ± ε with one sign per channel), Algorithm 3 for L2 (a grid
of "pseudo-Gaussian" bumps as initialisation; a bump in one window, whose mass is taken from
a second window, keeping ‖δ‖₂ = ε). The side follows p, the fraction of pixels changed,
halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10 000-query
budget rescaled to `queries`, as in the reference code.
Only logits are used, never gradients. Each iteration costs one forward pass; the loop stops
when every point is misclassified, and misclassified points are masked meanwhile.

Deviations from the reference implementation (fra31/auto-attack, `square.py`):
  * Each image draws its own window positions, signs and bump orientation, as in the
    original code of the paper; AutoAttack's PyTorch port shares them across the batch.
  * Window corners are drawn from all h − s + 1 valid positions (the reference's
    `randint(0, h − s)` never picks the last one).
  * In the L2 initialisation, the grid of bumps is centred on each axis separately (the
    reference centres both axes with the offset computed from the height) and each bump is
    transposed at random per image.
  * Restarts run inside one `lax.fori_loop`; each attacks only the points still correctly
    classified, and the lowest-margin point over the restarts is returned.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from siriib_jax.attacks.base import Attack, AttackResult, LogitsFn
from siriib_jax.attacks.objectives import cw_margin
from siriib_jax.attacks.projections import NORMS, per_example_norm

# Iterations (of 10 000) after which p is halved, as in the reference code.
_HALVING_ITERATIONS = np.array([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])


def p_schedule(queries: int, p_init: float) -> np.ndarray:
  """(queries,) the fraction p of pixels a square covers at each iteration."""
  rescaled = (np.arange(queries) / queries * 10000).astype(np.int64)
  return p_init / 2.0 ** np.searchsorted(_HALVING_ITERATIONS, rescaled, side="left")


def side_schedule(queries: int, p_init: float, height: int, width: int,
                  norm: str) -> np.ndarray:
  """(queries,) the side s = round(√(p·h·w)) of the square at each iteration.

  At least 1 for L∞; for L2 at least 3 and odd (so that the bump has a centre). Capped at
  min(h, w).
  """
  sides = np.round(np.sqrt(p_schedule(queries, p_init) * height * width)).astype(np.int64)
  if norm == "linf":
    sides = np.maximum(sides, 1)
  else:
    sides = np.maximum(sides, 3)
    sides += 1 - sides % 2
  return np.minimum(sides, min(height, width))


def _rings(rows: int, cols: int) -> np.ndarray:
  """(rows, cols) concentric rectangles: Σ_{k ≥ ring} 1/(k+1)², with unit L2 norm."""
  if rows == 0:
    return np.zeros((0, cols))
  ring = np.maximum(np.abs(np.arange(rows) - rows // 2)[:, None],
                    np.abs(np.arange(cols) - cols // 2)[None, :])
  n_rings = max(rows // 2, cols // 2) + 1
  tail = np.cumsum((1.0 / np.arange(1, n_rings + 1) ** 2)[::-1])[::-1]
  values = tail[ring]
  return values / np.linalg.norm(values)


def pseudo_gaussian_bump(side: int) -> np.ndarray:
  """(side, side) the L2 update shape (Algorithm 3): two stacked ring patterns of opposite
  sign (top side//2 rows positive), with unit L2 norm."""
  bump = np.concatenate([_rings(side // 2, side), -_rings(side - side // 2, side)])
  return bump / np.linalg.norm(bump)


def _margin(logits_fn: LogitsFn, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """(B,) `z_y − max_{j≠y} z_j`: the loss Square minimises; ≤ 0 once misclassified."""
  return -cw_margin(logits_fn(x), y)


def _random_window(key: jax.Array, shape, side: jnp.ndarray):
  """A random s×s window per image.

  Args:
    key: PRNG key.
    shape: (B, H, W).
    side: scalar int, s ≤ min(H, W).

  Returns:
    inside: (B, H, W, 1) bool mask of the window; rows, cols: (B, H, W) pixel coordinates
    relative to the window's top-left corner.
  """
  batch, height, width = shape
  k_top, k_left = jax.random.split(key)
  top = jax.random.randint(k_top, (batch, 1, 1), 0, height - side + 1)
  left = jax.random.randint(k_left, (batch, 1, 1), 0, width - side + 1)
  rows = jnp.broadcast_to(jnp.arange(height)[None, :, None] - top, shape)
  cols = jnp.broadcast_to(jnp.arange(width)[None, None, :] - left, shape)
  inside = (rows >= 0) & (rows < side) & (cols >= 0) & (cols < side)
  return inside[..., None], rows, cols


def _linf_init(key: jax.Array, x: jnp.ndarray, eps: float) -> jnp.ndarray:
  """Vertical stripes: x ± ε with one sign per (image, column, channel) (Algorithm 2)."""
  batch, _, width, channels = x.shape
  signs = jax.random.rademacher(key, (batch, 1, width, channels), dtype=x.dtype)
  return jnp.clip(x + eps * signs, 0.0, 1.0)


def _linf_proposal(key: jax.Array, x: jnp.ndarray, x_best: jnp.ndarray, side: jnp.ndarray,
                   eps: float) -> jnp.ndarray:
  """x_best with one random window set to x ± ε, one sign per channel (Algorithm 2)."""
  k_window, k_sign = jax.random.split(key)
  inside, _, _ = _random_window(k_window, x.shape[:3], side)
  signs = jax.random.rademacher(k_sign, (x.shape[0], 1, 1, x.shape[3]), dtype=x.dtype)
  return jnp.where(inside, jnp.clip(x + eps * signs, 0.0, 1.0), x_best)


def _block_grid(size: int, side: int):
  """Along one axis of length `size`, the (size//5)-grid of the L2 initialisation.

  Returns (size,) numpy arrays: the block index of each pixel (−1 outside the grid) and
  its offset within the block.
  """
  offset = np.arange(size) - (size - 5 * side) // 2
  block = np.where((offset >= 0) & (offset // side < size // side), offset // side, -1)
  return block, offset % side


def _l2_init(key: jax.Array, x: jnp.ndarray, eps: float) -> jnp.ndarray:
  """A grid of bumps of side max(h//5, 1), random sign per (image, bump, channel) and random
  orientation per (image, bump), rescaled to ‖δ‖₂ = ε, clipped to [0, 1] (Algorithm 3)."""
  batch, height, width, channels = x.shape
  side = max(height // 5, 1)
  bump = pseudo_gaussian_bump(side)
  row_block, row_offset = _block_grid(height, side)
  col_block, col_offset = _block_grid(width, side)
  covered = (row_block[:, None] >= 0) & (col_block[None, :] >= 0)
  rb, cb = np.maximum(row_block, 0)[:, None], np.maximum(col_block, 0)[None, :]
  upright = bump[row_offset[:, None], col_offset[None, :]]
  transposed = bump[col_offset[None, :], row_offset[:, None]]

  k_sign, k_flip = jax.random.split(key)
  grid_shape = (batch, height // side, width // side)
  signs = jax.random.rademacher(k_sign, grid_shape + (channels,), dtype=x.dtype)[:, rb, cb]
  flip = jax.random.bernoulli(k_flip, 0.5, grid_shape)[:, rb, cb]
  delta = jnp.where(covered, jnp.where(flip, transposed, upright), 0.0)[..., None] * signs
  return jnp.clip(x + eps * delta / per_example_norm(delta, "l2")[:, None, None, None],
                  0.0, 1.0)


def _window_norm(v: jnp.ndarray, inside: jnp.ndarray) -> jnp.ndarray:
  """(B, 1, 1, C) per-channel L2 norm of v (B, H, W, C) inside a (B, H, W, 1) mask."""
  return jnp.sqrt(jnp.sum(jnp.where(inside, v * v, 0.0), axis=(1, 2), keepdims=True))


def _l2_proposal(key: jax.Array, x: jnp.ndarray, x_best: jnp.ndarray, side: jnp.ndarray,
                 bump: jnp.ndarray, eps: float) -> jnp.ndarray:
  """Algorithm 3: a new bump in window 1 added to its current (normalised) content,
  window 2 emptied, the freed mass moved into window 1, then ‖δ‖₂ rescaled to ε.

  Args:
    bump: (S, S) with S ≥ side, the bump of this side in its top-left corner.
  """
  batch, _, _, channels = x.shape
  k_win1, k_win2, k_sign, k_flip = jax.random.split(key, 4)
  inside1, rows, cols = _random_window(k_win1, x.shape[:3], side)
  inside2, _, _ = _random_window(k_win2, x.shape[:3], side)
  delta = x_best - x
  free = jnp.maximum(eps**2 - per_example_norm(delta, "l2")**2, 0.0)[:, None, None, None]
  mass = free / channels + _window_norm(delta, inside1 | inside2)**2

  rows = jnp.clip(rows, 0, bump.shape[0] - 1)
  cols = jnp.clip(cols, 0, bump.shape[0] - 1)
  flip = jax.random.bernoulli(k_flip, 0.5, (batch, 1, 1))
  shape = jnp.where(flip, bump[cols, rows], bump[rows, cols])[..., None]
  signs = jax.random.rademacher(k_sign, (batch, 1, 1, channels), dtype=x.dtype)
  window = shape * signs + delta / (1e-12 + _window_norm(delta, inside1))
  window = window / (1e-12 + _window_norm(window, inside1)) * jnp.sqrt(mass)

  delta = jnp.where(inside1, window, jnp.where(inside2, 0.0, delta))
  scale = eps / (1e-12 + per_example_norm(delta, "l2"))
  return jnp.clip(x + scale[:, None, None, None] * delta, 0.0, 1.0)


def _proposal_fn(x_shape, queries: int, p_init: float, eps: float, norm: str):
  """`(key, i, x, x_best) -> x_new` for iteration i, with the side schedule baked in."""
  _, height, width, _ = x_shape
  sides_np = side_schedule(queries, p_init, height, width, norm)
  sides = jnp.asarray(sides_np)
  if norm == "linf":
    return lambda key, i, x, x_best: _linf_proposal(key, x, x_best, sides[i], eps)
  levels_np, level_of_iter = np.unique(sides_np, return_inverse=True)
  largest = int(levels_np.max())
  bumps = np.zeros((len(levels_np), largest, largest), np.float32)
  for level, side in enumerate(levels_np):
    bumps[level, :side, :side] = pseudo_gaussian_bump(int(side))
  bumps, level_of_iter = jnp.asarray(bumps), jnp.asarray(level_of_iter)
  return lambda key, i, x, x_best: _l2_proposal(key, x, x_best, sides[i],
                                                bumps[level_of_iter[i]], eps)


def _search(logits_fn: LogitsFn, x: jnp.ndarray, y: jnp.ndarray, key: jax.Array,
            attacked: jnp.ndarray, init_fn, proposal_fn, queries: int):
  """One restart of the random search (Algorithm 1) on the `attacked` (B,) points.

  Returns:
    x_best (B, H, W, C) and its margin (B,).
  """
  k_init, k_loop = jax.random.split(key)
  x_best = init_fn(k_init, x)
  margin = _margin(logits_fn, x_best, y)

  def active(margin):
    return attacked & (margin > 0)

  def keep_going(state):
    i, _, margin = state
    return (i < queries) & jnp.any(active(margin))

  def step(state):
    i, x_best, margin = state
    x_new = proposal_fn(jax.random.fold_in(k_loop, i), i, x, x_best)
    new_margin = _margin(logits_fn, x_new, y)
    accept = active(margin) & (new_margin < margin)
    x_best = jnp.where(accept[:, None, None, None], x_new, x_best)
    return i + 1, x_best, jnp.where(accept, new_margin, margin)

  _, x_best, margin = lax.while_loop(keep_going, step, (0, x_best, margin))
  return x_best, margin


def square(eps: float, norm: str = "linf", queries: int = 5000, p_init: float = 0.8,
           restarts: int = 1) -> Attack:
  """Square Attack as run by AutoAttack (standard: 5000 queries, p_init 0.8, 1 restart).

  Args:
    eps: radius of the L∞ or L2 ball.
    norm: "linf" or "l2".
    queries: iterations per restart, one forward pass each (plus one for the
      initialisation, as in the reference).
    p_init: initial fraction of pixels changed by a square.
    restarts: independent random searches; each attacks the points still classified
      correctly.

  Returns:
    An `Attack`; `x_adv` is the lowest-margin point found (x itself for points already
    misclassified), and `success` is `argmax logits_fn(x_adv) ≠ y`.
  """
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  init = functools.partial(_linf_init if norm == "linf" else _l2_init, eps=eps)

  def attack(logits_fn: LogitsFn, x: jnp.ndarray, y: jnp.ndarray,
             key: jax.Array) -> AttackResult:
    proposal = _proposal_fn(x.shape, queries, p_init, eps, norm)

    def restart(r, best):
      x_best, margin = best
      attacked = margin > 0
      x_run, run_margin = _search(logits_fn, x, y, jax.random.fold_in(key, r), attacked,
                                  init, proposal, queries)
      better = attacked & (run_margin < margin)
      return (jnp.where(better[:, None, None, None], x_run, x_best),
              jnp.where(better, run_margin, margin))

    x_adv, _ = lax.fori_loop(0, restarts, restart, (x, _margin(logits_fn, x, y)))
    success = jnp.argmax(logits_fn(x_adv), axis=-1) != y
    return AttackResult(x_adv, success)

  return attack
