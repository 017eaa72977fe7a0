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

from typing import Callable, Union

import jax.numpy as jnp

from siriib_jax.attacks import AttackResult, ImageLoss, pgd
from siriib_jax.attacks.objectives import cross_entropy
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


def adaptive_pgd(loss: str, eps: float, step_size: float, steps: int, norm: str = "linf",
                 restarts: int = 1, unroll: Union[None, bool, int] = None) -> Callable:
  """PGD maximising `loss` (e.g. `'ce+svd+info'`) through SiRIIB's outputs.

  Args:
    loss: terms of `TERMS` joined by '+'.
    eps, step_size, steps, norm, restarts, unroll: as `attacks.pgd` (random start).

  Returns:
    `attack(outputs_fn, x (B, H, W, 3), y (B,), key) -> AttackResult`, where `outputs_fn`
    maps images in [0, 1] to the model's `ModelOutput` (e.g. `suite.outputs_fn`); jittable.
  """
  terms = loss_terms(loss)

  def attack(outputs_fn, x, y, key) -> AttackResult:
    clean = outputs_fn(x)
    if clean.x_avg is None:
      raise ValueError("adaptive attacks need a SiRIIB model (model.siriib.enabled)")

    def value(x_adv, logits, y):
      adv = outputs_fn(x_adv)  # Merged with the attack's own forward pass by XLA's CSE.
      parts = {"ce": lambda: cross_entropy(logits, y),
               "svd": lambda: svd_loss(adv.x_avg, x),
               "info": lambda: info_loss(adv.features, clean.features)}
      return sum(parts[t]() for t in terms)

    run = pgd(eps, step_size, steps, norm, loss=ImageLoss(value), restarts=restarts,
              unroll=unroll)
    return run(lambda v: outputs_fn(v).logits.astype(jnp.float32), x, y, key)

  return attack

