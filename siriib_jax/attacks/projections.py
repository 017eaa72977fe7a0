"""Projections onto the threat model: the ε-ball around x intersected with [0, 1]."""

import jax.numpy as jnp

NORMS = ("linf", "l2")


def _per_example_l2(v: jnp.ndarray) -> jnp.ndarray:
  return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


def per_example_norm(v: jnp.ndarray, norm: str) -> jnp.ndarray:
  """(B,) L∞ or L2 norm of each example of `v` (B, ...)."""
  flat = v.reshape(v.shape[0], -1)
  if norm == "linf":
    return jnp.max(jnp.abs(flat), axis=1)
  if norm == "l2":
    return jnp.sqrt(jnp.sum(flat * flat, axis=1))
  raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def project(x_adv: jnp.ndarray, x: jnp.ndarray, eps: float, norm: str) -> jnp.ndarray:
  """Projects `x_adv` onto {x' : ‖x' − x‖ ≤ eps} and then clips to [0, 1].

  For L∞ the result is the exact projection onto the intersection; for L2 the clip can
  only shrink the perturbation, so the result stays inside the ball.
  """
  delta = x_adv - x
  if norm == "linf":
    delta = jnp.clip(delta, -eps, eps)
  elif norm == "l2":
    delta = delta * jnp.minimum(1.0, eps / (_per_example_l2(delta) + 1e-12))
  else:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  return jnp.clip(x + delta, 0.0, 1.0)


def normalized_step(grad: jnp.ndarray, norm: str) -> jnp.ndarray:
  """The steepest-ascent direction of unit norm: `sign(g)` for L∞, `g / ‖g‖₂` for L2.

  Non-finite entries of `grad` count as 0, so that under L2 one NaN entry does not make
  the norm, and with it every entry of the step, NaN (a zero gradient gives a zero step).
  """
  grad = jnp.where(jnp.isfinite(grad), grad, jnp.zeros_like(grad))
  if norm == "linf":
    return jnp.sign(grad)
  if norm == "l2":
    return grad / (_per_example_l2(grad) + 1e-12)
  raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
