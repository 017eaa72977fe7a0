"""The attack registry and the attack-name grammar: the one place a name becomes an attack.

Names (used by `get_attack`, `config.evaluation.attacks` and `config.final_eval_attacks`):
  fgsm; pgd<N> (PGD-N on cross-entropy, step ε/4 unless given, 1 random start; Madry et al.
  2018); cw<N> (PGD-N on the C&W margin; Carlini & Wagner 2017); apgd-ce; apgd-dlr; apgd-t
  (Croce & Hein 2020); fab-t (Croce & Hein 2020b); square (Andriushchenko et al. 2020);
  autoattack; autoattack-rand (Croce & Hein 2020).
"""

import re
from typing import Callable, NamedTuple, Optional

from siriib_jax.attacks.apgd import apgd, apgd_targeted
from siriib_jax.attacks.autoattack import autoattack
from siriib_jax.attacks.fab import fab_targeted
from siriib_jax.attacks.objectives import cross_entropy, cw_margin, dlr
from siriib_jax.attacks.pgd import fgsm, pgd
from siriib_jax.attacks.square import square
from siriib_jax.attacks.threat_model import check_attack
from siriib_jax.config_errors import ConfigError
from siriib_jax.registry import Registry

# Factories `(eps, norm, **kwargs) -> Attack | AutoAttack` of the names without a step count.
ATTACKS = Registry("attack", {
    "fgsm": fgsm,
    "apgd-ce": apgd,
    "apgd-dlr": lambda eps, norm, **kw: apgd(eps, norm, loss=dlr, **kw),
    "apgd-t": apgd_targeted,
    "fab-t": fab_targeted,
    "square": square,
    "autoattack": lambda eps, norm, **kw: autoattack(eps, norm, "standard", **kw),
    "autoattack-rand": lambda eps, norm, **kw: autoattack(eps, norm, "rand", **kw),
}, config_key=False)
# The objectives of the step-count families `pgd<N>` and `cw<N>`.
ITERATIVE_LOSSES = {"pgd": cross_entropy, "cw": cw_margin}
_ITERATIVE = re.compile(r"(pgd|cw)(\d+)")
_LABELS = {"fgsm": "FGSM", "autoattack": "AutoAttack", "autoattack-rand": "AutoAttack-rand",
           "apgd-ce": "APGD-CE", "apgd-dlr": "APGD-DLR", "apgd-t": "APGD-T", "fab-t": "FAB-T",
           "square": "Square"}
_FAMILY_LABELS = {"pgd": "PGD", "cw": "C&W"}
# Families whose attacks use the model's gradient (the rest only query it).
WHITE_BOX_FAMILIES = ("fgsm", "pgd", "cw", "apgd", "fab")


class AttackName(NamedTuple):
  """A parsed attack name.

  Attributes:
    name: the name as given (`pgd20`, `apgd-t`).
    family: `pgd`, `cw`, `apgd`, `fab`, `square`, `autoattack` or `fgsm`.
    steps: N of `pgd<N>` / `cw<N>`, else None.
    label: the paper's name (PGD-20, C&W-100, APGD-T, AutoAttack).
  """
  name: str
  family: str
  steps: Optional[int]
  label: str


def parse_attack_name(name: str) -> AttackName:
  """Parses `name` without building anything (pure; for config checks).

  Raises:
    ConfigError (a ValueError) naming the known attacks if `name` is not one.
  """
  match = _ITERATIVE.fullmatch(name)
  if match:
    family, steps = match[1], int(match[2])
    if steps < 1:
      raise ConfigError(f"attack {name!r}: the step count N of pgd<N> / cw<N> must be ≥ 1")
    return AttackName(name, family, steps, f"{_FAMILY_LABELS[family]}-{steps}")
  ATTACKS.lookup(name, extra="pgd<N>, cw<N>")
  return AttackName(name, re.match(r"[a-z]+", name)[0], None, _LABELS[name])


def get_attack(name: str, eps: float, norm: str = "linf", **kwargs):
  """The attack called `name` (see the module docstring) in the `norm` ε-ball.

  Args:
    name: an attack name.
    eps: the ε-ball's radius in [0, 1] pixel units.
    norm: 'linf' or 'l2'.
    **kwargs: passed to the factory (e.g. `get_attack('pgd20', 8 / 255, step_size=2 / 255)`,
      `get_attack('autoattack', 8 / 255, square_queries=1000, bucket=256)`).

  Returns:
    A jittable `Attack`, or an `AutoAttack` (host-side ensemble) for `autoattack*`.
  Raises:
    ConfigError (a ValueError) naming the known attacks if `name` is not one.
    ValueError naming `eps` or `step_size`: negative, not finite, or above 1 under L∞
      (8 for 8/255; `threat_model.check_attack`).
  """
  check_attack(eps, norm, kwargs.get("step_size"))
  parsed = parse_attack_name(name)
  if parsed.steps is not None:
    kwargs.setdefault("step_size", eps / 4)
    return pgd(eps, steps=parsed.steps, norm=norm, loss=ITERATIVE_LOSSES[parsed.family],
               **kwargs)
  factory: Callable = ATTACKS[name]
  return factory(eps, norm, **kwargs)
