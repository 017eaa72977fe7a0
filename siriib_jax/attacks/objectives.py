"""Per-example attack objectives on logits (B, K) and labels (B,), all to be *maximised*.

Cross-entropy (Madry et al. 2018), the C&W margin (Carlini & Wagner 2017, as PGD on the
margin), and DLR / targeted DLR (Croce & Hein 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML, eqs. 5 and 7).

Class counts. A loss that reads the k-th largest logit is defined only for K ≥ k classes:
DLR reads z_π3 (K ≥ 3), targeted DLR z_π4 (K ≥ 4), the margin needs a class other than y
(K ≥ 2). Such a loss carries `min_classes`; it checks K against the static shape of its
logits when traced (before anything is compiled) and raises `ClassCountError` below it.
No substitute is used: with K = 2, for instance, any DLR-like ratio of logit gaps is ±1, a
constant whose gradient is zero, and an attack on it would silently do nothing.
"""

import jax
import jax.numpy as jnp

from siriib_jax.losses import cross_entropy  # pylint: disable=unused-import  (re-exported)


class ClassCountError(ValueError):
  """A loss or an attack was given logits with fewer classes than it is defined for."""


def min_classes(loss) -> int:
  """The fewest classes K for which `loss` is defined: its `min_classes`, else 2."""
  return int(getattr(loss, "min_classes", 2))


def require_classes(num_classes: int, required: int, what: str, reason: str = "",
                    fix: str = "") -> None:
  """Raises `ClassCountError` naming `what` and both counts if `num_classes < required`.

  Args:
    num_classes: K, the last dimension of the logits (a static shape).
    required: the fewest classes `what` is defined for.
    what: the attack or loss, as the user named it (e.g. "apgd-dlr (APGD-DLR)").
    reason: why it needs them (which logit it reads).
    fix: what to use instead.
  """
  if num_classes < required:
    raise ClassCountError(
        f"{what} needs at least {required} classes, but the model's logits have "
        f"{num_classes} (shape (B, {num_classes}))" + (f": {reason}" if reason else "") +
        "." + (f" {fix}" if fix else ""))


DLR_REASON = ("the DLR loss (Croce & Hein 2020, eq. 5) divides by z_π1 − z_π3, the gap "
              "between the largest and the 3rd largest logit")
DLR_TARGETED_REASON = ("the targeted DLR loss (Croce & Hein 2020, eq. 7) divides by "
                       "z_π1 − (z_π3 + z_π4) / 2 and so reads the 4th largest logit")
FEW_CLASSES_FIX = ("Use an attack defined for that many classes instead: apgd-ce, cw<N>, "
                   "fab-t or square (apgd-dlr from 3 classes on). With 2 classes "
                   "cross-entropy and the margin are monotone in z_y − z_j, so APGD-CE needs "
                   "no DLR loss.")


def _true_and_best_other(logits: jnp.ndarray, y: jnp.ndarray):
  one_hot = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  true = jnp.sum(jnp.where(one_hot, logits, 0.0), axis=-1)
  best_other = jnp.max(jnp.where(one_hot, -jnp.inf, logits), axis=-1)
  return true, best_other


def cw_margin(logits: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """(B,) `max_{j≠y} z_j − z_y`: positive exactly where the point is misclassified.

  Raises:
    ClassCountError: K < 2 (there is no other class).
  """
  require_classes(logits.shape[-1], 2, "the C&W margin (objectives.cw_margin)",
                  "it reads the largest logit other than z_y")
  true, best_other = _true_and_best_other(logits.astype(jnp.float32), y)
  return best_other - true


def dlr(logits: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """(B,) untargeted DLR (Croce & Hein 2020, eq. 5):
  `−(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e-12)`, π sorting the logits (B, K) downwards.

  Raises:
    ClassCountError: K < 3 (`dlr.min_classes`), from the static shape, when traced.
  """
  require_classes(logits.shape[-1], dlr.min_classes, "the DLR loss (objectives.dlr)",
                  DLR_REASON, FEW_CLASSES_FIX)
  logits = logits.astype(jnp.float32)
  true, best_other = _true_and_best_other(logits, y)
  top = jnp.sort(logits, axis=-1)
  return -(true - best_other) / (top[:, -1] - top[:, -3] + 1e-12)


def dlr_targeted(logits: jnp.ndarray, y: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """(B,) targeted DLR (Croce & Hein 2020, eq. 7):
  `−(z_y − z_t) / (z_π1 − (z_π3 + z_π4) / 2 + 1e-12)` for targets t (B,).

  Raises:
    ClassCountError: K < 4 (`dlr_targeted.min_classes`), from the static shape, when traced.
  """
  require_classes(logits.shape[-1], dlr_targeted.min_classes,
                  "the targeted DLR loss (objectives.dlr_targeted)", DLR_TARGETED_REASON,
                  FEW_CLASSES_FIX)
  logits = logits.astype(jnp.float32)
  z_true = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
  z_target = jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]
  top = jnp.sort(logits, axis=-1)
  return -(z_true - z_target) / (top[:, -1] - 0.5 * (top[:, -3] + top[:, -4]) + 1e-12)


cw_margin.min_classes = 2
dlr.min_classes = 3
dlr_targeted.min_classes = 4
