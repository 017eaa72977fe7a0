"""Adaptive attacks on SiRIIB (paper §5.5, Table 4): PGD on `L_CE`, `L_svd`, `L_info` and
their sums, through the model's own SiRIIB outputs.

For an attacked point `x_adv` near the clean `x`:

* `L_CE = CE(logits(x_adv), y)`, PGD's usual loss;
* `L_svd = L_svd(x_avg(x_adv), x)`: pushes SiRIIB's purified image away from the clean
  image, in singular values, singular vectors and pixels (`losses.svd_loss`);
* `L_info = Σ_i d(f_i(x_adv), f_i(x))`: pushes the IB skip features away from their clean
  values (`losses.info_loss`).

The sums are unweighted, as Table 4's headers write them. The clean side (`x`, `f_i(x)`) is
fixed during the attack. These losses need a model returning a `ModelOutput` with `x_avg`
and `features` (SiRIIB enabled).
"""

from typing import Callable, NamedTuple, Union

import jax.numpy as jnp

from siriib_jax.attacks import AttackResult, ImageLoss, pgd
from siriib_jax.attacks.objectives import cross_entropy
from siriib_jax.attacks.threat_model import check_attack
from siriib_jax.losses import info_loss, svd_loss

TERMS = ("ce", "svd", "info")
# Table 4's columns, in its order.
TABLE4_LOSSES = ("ce", "svd", "info", "ce+svd", "ce+info", "ce+svd+info")
_LABELS = {"ce": "L_CE", "svd": "L_svd", "info": "L_info"}


def loss_terms(loss: str) -> tuple[str, ...]:
  """`'ce+svd'` -> `('ce', 'svd')`; raises ValueError on an unknown term."""
  terms = tuple(loss.split("+"))
  unknown = [t for t in terms if t not in TERMS]
  if unknown or not terms:
    raise ValueError(f"adaptive loss {loss!r}: terms must be among {TERMS}, joined by '+'")
  return terms


def loss_label(loss: str) -> str:
  """`'ce+svd'` -> `'L_CE + L_svd'`."""
  return " + ".join(_LABELS[t] for t in loss_terms(loss))


class Target(NamedTuple):
  """What an adaptive attack runs on: `outputs_fn` maps images in [0, 1] to the model's
  `ModelOutput` (e.g. `models.model_fn.outputs_fn`); `weights` (3,) float32 weigh `TERMS`. Both are
  traced, so every loss of Table 4 shares one compiled attack."""
  outputs_fn: Callable
  weights: jnp.ndarray


def loss_weights(loss: str) -> jnp.ndarray:
  """`'ce+svd'` -> [1, 1, 0]: the weights of `TERMS` in the unweighted sum."""
  terms = loss_terms(loss)
  return jnp.asarray([float(t in terms) for t in TERMS], jnp.float32)


def adaptive_pgd(eps: float, step_size: float, steps: int, norm: str = "linf",
                 restarts: int = 1, unroll: Union[None, bool, int] = None) -> Callable:
  """PGD maximising `w · (L_CE, L_svd, L_info)` through SiRIIB's outputs.

  Args:
    eps, step_size, steps, norm, restarts, unroll: as `attacks.pgd` (random start).

  Returns:
    `attack(target: Target, x (B, H, W, 3), y (B,), key) -> AttackResult`; jittable. A
    zero weight still computes its term (one program for every loss). As `attacks.pgd`
    for evaluation: a point is broken when any iterate is misclassified (finite logits),
    and that first iterate is returned; non-finite gradient entries (e.g. through the
    SVD's derivative) step as 0.
  """
  check_attack(eps, norm, step_size)

  def attack(target: Target, x, y, key) -> AttackResult:
    outputs_fn, weights = target
    clean = outputs_fn(x)
    if clean.x_avg is None:
      raise ValueError("adaptive attacks need a SiRIIB model (model.siriib.enabled)")

    def value(x_adv, logits, y):
      adv = outputs_fn(x_adv)  # Merged with the attack's own forward pass by XLA's CSE.
      return (weights[0] * cross_entropy(logits, y) +
              weights[1] * svd_loss(adv.x_avg, x) +
              weights[2] * info_loss(adv.features, clean.features))

    run = pgd(eps, step_size, steps, norm, loss=ImageLoss(value), restarts=restarts,
              unroll=unroll)
    return run(lambda v: outputs_fn(v).logits.astype(jnp.float32), x, y, key)

  return attack
