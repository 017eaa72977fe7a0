"""Adversarial attacks in JAX, and a registry by name for evaluation configs.

Every gradient or search attack is a factory returning a pure, jittable
`Attack`: `(logits_fn, x (B, H, W, C) in [0, 1], y (B,), key) -> AttackResult(x_adv, success)`.
AutoAttack is a host-side ensemble (`autoattack.AutoAttack`) that runs those attacks on the
points still robust and returns NumPy arrays.

Names for `get_attack(name, eps, norm='linf', **kwargs)`:
  fgsm; pgd<N> (PGD-N on cross-entropy, step ε/4, 1 random start); cw<N> (PGD-N on the C&W
  margin); apgd-ce; apgd-dlr; apgd-t; fab-t; square; autoattack; autoattack-rand.
`kwargs` go to the factory (e.g. `get_attack('pgd20', 8 / 255, step_size=2 / 255)`).
"""

import re

from siriib_jax.attacks.apgd import apgd, apgd_targeted
from siriib_jax.attacks.autoattack import AutoAttack, AutoAttackResult, autoattack
from siriib_jax.attacks.base import Attack, AttackResult, LogitsFn, TargetedAttack
from siriib_jax.attacks.fab import fab_targeted
from siriib_jax.attacks.gradients import ImageLoss
from siriib_jax.attacks.objectives import cross_entropy, cw_margin, dlr, dlr_targeted
from siriib_jax.attacks.pgd import fgsm, pgd
from siriib_jax.attacks.square import square

__all__ = [
    "Attack", "AttackResult", "AutoAttack", "AutoAttackResult", "ImageLoss", "LogitsFn",
    "TargetedAttack", "apgd", "apgd_targeted", "autoattack", "cross_entropy", "cw_margin",
    "dlr", "dlr_targeted", "fab_targeted", "fgsm", "get_attack", "pgd", "square",
]

_FIXED = {
    "fgsm": fgsm,
    "apgd-ce": apgd,
    "apgd-dlr": lambda eps, norm, **kw: apgd(eps, norm, loss=dlr, **kw),
    "apgd-t": apgd_targeted,
    "fab-t": fab_targeted,
    "square": square,
    "autoattack": lambda eps, norm, **kw: autoattack(eps, norm, "standard", **kw),
    "autoattack-rand": lambda eps, norm, **kw: autoattack(eps, norm, "rand", **kw),
}
_ITERATIVE = {"pgd": cross_entropy, "cw": cw_margin}


def get_attack(name: str, eps: float, norm: str = "linf", **kwargs):
  """The attack called `name` (see the module docstring) in the `norm` ε-ball.

  Raises:
    ValueError naming the known attacks if `name` is not one.
  """
  if name in _FIXED:
    return _FIXED[name](eps, norm, **kwargs)
  match = re.fullmatch(r"(pgd|cw)(\d+)", name)
  if match:
    kwargs.setdefault("step_size", eps / 4)
    return pgd(eps, steps=int(match[2]), norm=norm, loss=_ITERATIVE[match[1]], **kwargs)
  raise ValueError(f"unknown attack {name!r}; known: {sorted(_FIXED)} and pgd<N>, cw<N>")
