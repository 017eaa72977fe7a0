"""Per-example attack objectives on logits (B, K) and labels (B,), all to be *maximised*.

Cross-entropy (Madry et al. 2018), the C&W margin (Carlini & Wagner 2017, as PGD on the
margin), and DLR / targeted DLR (Croce & Hein 2020, eqs. 5 and 7).
"""

import jax
import jax.numpy as jnp

from siriib_jax.losses import cross_entropy  # pylint: disable=unused-import  (re-exported)


def _true_and_best_other(logits: jnp.ndarray, y: jnp.ndarray):
  one_hot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  true = jnp.sum(jnp.where(one_hot, logits, 0.0), axis=-1)
  best_other = jnp.max(jnp.where(one_hot, -jnp.inf, logits), axis=-1)
  return true, best_other


def cw_margin(logits: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """(B,) `max_{j≠y} z_j − z_y`: positive exactly where the point is misclassified."""
  true, best_other = _true_and_best_other(logits.astype(jnp.float32), y)
  return best_other - true


def dlr(logits: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """(B,) untargeted DLR: `−(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e-12)`."""
  logits = logits.astype(jnp.float32)
  true, best_other = _true_and_best_other(logits, y)
  top = jnp.sort(logits, axis=-1)
  return -(true - best_other) / (top[:, -1] - top[:, -3] + 1e-12)


def dlr_targeted(logits: jnp.ndarray, y: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """(B,) targeted DLR: `−(z_y − z_t) / (z_π1 − (z_π3 + z_π4) / 2 + 1e-12)`."""
  logits = logits.astype(jnp.float32)
  z_true = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
  z_target = jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]
  top = jnp.sort(logits, axis=-1)
  return -(z_true - z_target) / (top[:, -1] - 0.5 * (top[:, -3] + top[:, -4]) + 1e-12)
