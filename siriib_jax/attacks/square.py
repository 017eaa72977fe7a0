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
  * The L2 initialisation is built per axis, so that it is defined on any image shape
    (H ≠ W, a side under 5): along an axis of n pixels the blocks have side max(n // 5, 1)
    and the n // side of them are centred on that axis. The reference takes the block side
    h // 5 from the height for both axes, centres both with the height's offset and has no
    block at all when h < 5; here a side-1 axis gets bumps one pixel thick. A block of
    r × c pixels holds the bump of `pseudo_gaussian_bump(r, c)` or, at random per image
    and block, its sideways form (the transpose of the reference, for square blocks).
    The start perturbation is therefore never zero, and on square images of side ≥ 25
    (CIFAR's 32, ImageNet's 224) the grid is the reference's.
  * Every normalisation divides by a norm only where it is non-zero (a zero vector stays
    zero, instead of becoming NaN), and a NaN margin (NaN logits from the model) is an
    error, raised when the attack's result is read: a NaN margin compares as "not above
    zero", so every such point would otherwise look broken-through or done.
  * Restarts run inside one `lax.fori_loop`; each attacks only the points still correctly
    classified, and the lowest-margin point over the restarts is returned.
  * The query loop can also be run in segments (`base.QueryAttack`: `advance`),
    iteration i of a restart drawing from `fold_in(key, i)` in whichever segment it runs:
    the evaluation gathers the points still to attack between segments, as the reference
    queries only the points not yet broken.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from siriib_jax.attacks.base import (AttackResult, LogitsFn, QueryAttack, SearchState,
                                     misclassified, reusable)
from siriib_jax.attacks.objectives import cw_margin
from siriib_jax.attacks.projections import NORMS, per_example_norm
from siriib_jax.attacks.threat_model import check_attack

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
  min(h, w), which on images with a side under 3 gives an L2 side of 1 or 2.
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


def pseudo_gaussian_bump(rows: int, cols: Optional[int] = None) -> np.ndarray:
  """(rows, cols) the L2 update shape (Algorithm 3 of Andriushchenko et al. 2020): two
  stacked ring patterns of opposite sign (the top rows // 2 rows positive), with unit L2
  norm. `cols` defaults to `rows` (the square bump of the paper). Non-zero for any
  rows, cols ≥ 1 (a single row is one negative ring pattern).

  Raises:
    ValueError: rows or cols < 1.
  """
  cols = rows if cols is None else cols
  if rows < 1 or cols < 1:
    raise ValueError(f"a bump needs at least one row and column, got {rows} × {cols}")
  bump = np.concatenate([_rings(rows // 2, cols), -_rings(rows - rows // 2, cols)])
  return bump / np.linalg.norm(bump)


def _unit(v: jnp.ndarray, norm: jnp.ndarray) -> jnp.ndarray:
  """v / norm where norm > 0, and 0 where norm is 0 (never NaN); norm broadcasts to v."""
  return v / jnp.where(norm > 0, norm, 1.0)


def margin(logits: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """(B,) `z_y − max_{j≠y} z_j` of logits (B, K) and labels y (B,): the loss Square
  minimises; ≤ 0 once misclassified."""
  return -cw_margin(logits, y)


def _margin(logits_fn: LogitsFn, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """`margin` at x (B, H, W, C)."""
  return margin(logits_fn(x), y)


def _raise_if_nan(nan_margin: np.ndarray) -> None:
  """Host callback: the margin was NaN for some points (the model returned NaN logits)."""
  if np.any(nan_margin):
    raise FloatingPointError(
        f"Square attack: the margin z_y − max_(j≠y) z_j is NaN for {int(np.sum(nan_margin))} "
        f"of {nan_margin.size} points (indices {np.flatnonzero(nan_margin)[:10].tolist()}): "
        "the model returned NaN logits on them (or on a point of their ε-ball), so Square "
        "cannot compare margins. Check the model on these inputs (e.g. its normalisation "
        "or a division by zero) before attacking it.")


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


def _block_grid(size: int):
  """Along one axis of `size` pixels, the grid of the L2 initialisation: blocks of side
  max(size // 5, 1), as many as fit (size // side ≥ 1), centred on the axis.

  Returns:
    block: (size,) numpy int, the block of each pixel (−1 outside the grid);
    offset: (size,) its offset within the block;
    side, count: the block side and the number of blocks.
  """
  side = max(size // 5, 1)
  count = size // side
  position = np.arange(size) - (size - count * side) // 2
  block = np.where((position >= 0) & (position < count * side), position // side, -1)
  return block, position % side, side, count


def _l2_init(key: jax.Array, x: jnp.ndarray, eps: float) -> jnp.ndarray:
  """A grid of bumps (`_block_grid` per axis: r × c blocks, r = max(h // 5, 1),
  c = max(w // 5, 1)), random sign per (image, block, channel) and random orientation per
  (image, block), rescaled to ‖δ‖₂ = ε, clipped to [0, 1] (Algorithm 3).

  δ is non-zero before the clip on any image shape: every axis has at least one block, and
  a bump is non-zero on its whole block.
  """
  batch, height, width, channels = x.shape
  row_block, row_offset, rows, n_rows = _block_grid(height)
  col_block, col_offset, cols, n_cols = _block_grid(width)
  covered = (row_block[:, None] >= 0) & (col_block[None, :] >= 0)
  rb, cb = np.maximum(row_block, 0)[:, None], np.maximum(col_block, 0)[None, :]
  # Two orientations of the r × c bump: split into top/bottom halves, or left/right ones
  # (for a square block the second is the first transposed).
  upright = pseudo_gaussian_bump(rows, cols)[row_offset[:, None], col_offset[None, :]]
  sideways = pseudo_gaussian_bump(cols, rows).T[row_offset[:, None], col_offset[None, :]]

  k_sign, k_flip = jax.random.split(key)
  grid_shape = (batch, n_rows, n_cols)
  signs = jax.random.rademacher(k_sign, grid_shape + (channels,), dtype=x.dtype)[:, rb, cb]
  flip = jax.random.bernoulli(k_flip, 0.5, grid_shape)[:, rb, cb]
  delta = jnp.where(covered, jnp.where(flip, sideways, upright), 0.0)[..., None] * signs
  norm = per_example_norm(delta, "l2")[:, None, None, None]
  return jnp.clip(x + eps * _unit(delta, norm), 0.0, 1.0)


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
  window = shape * signs + _unit(delta, _window_norm(delta, inside1))
  window = _unit(window, _window_norm(window, inside1)) * jnp.sqrt(mass)

  delta = jnp.where(inside1, window, jnp.where(inside2, 0.0, delta))
  norm = per_example_norm(delta, "l2")[:, None, None, None]
  return jnp.clip(x + eps * _unit(delta, norm), 0.0, 1.0)


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


def fresh_state(x: jnp.ndarray) -> SearchState:
  """The state a restart begins from (`advance` with start = −1): x (B, H, W, C) itself,
  margin +inf (the initial perturbation is always accepted), nothing invalid; NumPy arrays
  beside x (the runner updates them in place)."""
  return SearchState(x, np.full(x.shape[:1], np.inf, np.float32), np.zeros(x.shape[:1], bool))


def _advance(logits_fn: LogitsFn, x: jnp.ndarray, y: jnp.ndarray, key_run: jax.Array,
             state: SearchState, attacked: jnp.ndarray, start, stop, proposal_fn,
             init_fn) -> SearchState:
  """Iterations start … stop − 1 of one restart of the random search (Algorithm 1) on the
  `attacked` (B,) points, from `state`; a point stops once misclassified (margin ≤ 0), and
  the loop once no point is left or a NaN margin was met. Iteration −1 (start = −1, from
  `fresh_state`) is the initial perturbation (line 1, `init_fn`, drawn from
  `split(key_run)[0]`); iteration i ≥ 0 draws its proposal from `fold_in(key_loop, i)`
  whatever the segment it runs in, so running the iterations in several segments gives the
  same result as one loop."""
  k_init, k_loop = jax.random.split(key_run)

  def active(margin):
    return attacked & (margin > 0)

  def keep_going(carry):
    i, _, margin, nan = carry
    return (i < stop) & jnp.any(active(margin)) & ~jnp.any(nan)

  def step(carry):
    i, x_best, margin, nan = carry
    x_new = jnp.where(i < 0, init_fn(k_init, x),
                      proposal_fn(jax.random.fold_in(k_loop, i), i, x, x_best))
    new_margin = _margin(logits_fn, x_new, y)
    accept = active(margin) & (new_margin < margin)
    x_best = jnp.where(accept[:, None, None, None], x_new, x_best)
    nan = nan | (active(margin) & jnp.isnan(new_margin))
    return i + 1, x_best, jnp.where(accept, new_margin, margin), nan

  carry = (jnp.asarray(start, jnp.int32), *state)
  _, x_best, margin, nan = lax.while_loop(keep_going, step, carry)
  return SearchState(x_best, margin, nan)


@reusable
def square(eps: float, norm: str = "linf", queries: int = 5000, p_init: float = 0.8,
           restarts: int = 1) -> QueryAttack:
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
    A `base.QueryAttack`: an `Attack` whose query loop can also run in segments, each on
    the points still to attack (as the evaluation runs it: `runner.attack_points`).
    On images x (B, H, W, C) of any height and width ≥ 1, `x_adv` is the
    lowest-margin point found (x itself for points already misclassified), and `success` is
    `base.misclassified(logits_fn(x_adv), y)` (finite logits, argmax ≠ y).

  Raises:
    ValueError: an unknown `norm`, or queries, restarts < 1, or p_init outside (0, 1].
    FloatingPointError (inside the `JaxRuntimeError` that reading the result raises): a
      margin was NaN, i.e. the model returned NaN logits on x or on a proposal.
  """
  check_attack(eps, norm)
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  if queries < 1 or restarts < 1:
    raise ValueError(f"queries and restarts must be ≥ 1, got {queries} and {restarts}")
  if not 0 < p_init <= 1:
    raise ValueError(f"p_init is a fraction of the pixels, in (0, 1]; got {p_init}")
  init = functools.partial(_linf_init if norm == "linf" else _l2_init, eps=eps)

  def advance(logits_fn: LogitsFn, x, y, key, restart, state: SearchState, start,
              stop) -> SearchState:
    proposal = _proposal_fn(x.shape, queries, p_init, eps, norm)
    attacked = jnp.ones(y.shape, bool)
    return _advance(logits_fn, x, y, jax.random.fold_in(key, restart), state, attacked,
                    start, stop, proposal, init)

  def attack(logits_fn: LogitsFn, x: jnp.ndarray, y: jnp.ndarray,
             key: jax.Array) -> AttackResult:
    proposal = _proposal_fn(x.shape, queries, p_init, eps, norm)

    def restart(r, best):
      x_best, margin, nan = best
      attacked = margin > 0
      key_run = jax.random.fold_in(key, r)
      run = _advance(logits_fn, x, y, key_run, fresh_state(x), attacked, -1,
                     queries, proposal, init)
      better = attacked & (run.margin < margin)
      return (jnp.where(better[:, None, None, None], run.x, x_best),
              jnp.where(better, run.margin, margin), nan | run.invalid)

    margin = _margin(logits_fn, x, y)
    x_adv, _, nan = lax.fori_loop(0, restarts, restart, (x, margin, jnp.isnan(margin)))
    jax.debug.callback(_raise_if_nan, nan)
    success = misclassified(logits_fn(x_adv), y)
    return AttackResult(x_adv, success)

  return QueryAttack(attack, margin, advance, fresh_state, queries, restarts)
