"""Adversarial attacks in JAX; `get_attack(name, eps, norm)` builds one by name.

Every gradient or search attack is a factory returning a pure, jittable
`Attack`: `(logits_fn, x (B, H, W, C) in [0, 1], y (B,), key) -> AttackResult(x_adv, success)`.
AutoAttack is a host-side ensemble (`autoattack.AutoAttack`) that runs those attacks on the
points still robust and returns NumPy arrays. The names and their grammar live in
`attacks/registry.py`.
"""

from siriib_jax.attacks.apgd import apgd, apgd_targeted
from siriib_jax.attacks.autoattack import AutoAttack, AutoAttackResult, autoattack
from siriib_jax.attacks.base import Attack, AttackResult, LogitsFn, TargetedAttack
from siriib_jax.attacks.fab import fab_targeted
from siriib_jax.attacks.gradients import ImageLoss
from siriib_jax.attacks.objectives import cross_entropy, cw_margin, dlr, dlr_targeted
from siriib_jax.attacks.pgd import fgsm, pgd
from siriib_jax.attacks.registry import ATTACKS, AttackName, get_attack, parse_attack_name
from siriib_jax.attacks.square import square

__all__ = [
    "ATTACKS", "Attack", "AttackName", "AttackResult", "AutoAttack", "AutoAttackResult",
    "ImageLoss", "LogitsFn", "TargetedAttack", "apgd", "apgd_targeted", "autoattack",
    "cross_entropy", "cw_margin", "dlr", "dlr_targeted", "fab_targeted", "fgsm",
    "get_attack", "parse_attack_name", "pgd", "square",
]
