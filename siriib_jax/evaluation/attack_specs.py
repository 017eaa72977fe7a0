"""The evaluation's attacks, named as in `config.evaluation.attacks` (paper §5.1, SPEC §5).

A name is `clean`, `adaptive` (the Table 4 family, `adaptive.py`), or a name of the attack
registry (`siriib_jax/attacks/registry.py`: `pgd20`, `cw100`, `autoattack`, `apgd-ce`,
`square`, …) under L∞, or the same prefixed `l2-` under L2. Each threat model takes its ε
and (for `pgd<N>` / `cw<N>`) its step size from `config.evaluation.linf` / `.l2`.
"""

import dataclasses
from typing import Any, Optional

import ml_collections

from siriib_jax.attacks.registry import get_attack, parse_attack_name

L2_PREFIX = "l2-"
# Names of `evaluation.attacks` that are not registry attacks.
SPECIAL_NAMES = ("clean", "adaptive")


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """One attack of the evaluation.

  Attributes:
    attack: the registry name (`pgd20`, `autoattack`, …).
    norm: 'linf' or 'l2'.
    eps: radius of the ball in [0, 1] pixel units.
    step_size: α of `pgd<N>` / `cw<N>` (None for the other attacks).
  """
  attack: str
  norm: str
  eps: float
  step_size: Optional[float] = None

  @property
  def name(self) -> str:
    """The config name: `pgd20`, `l2-pgd20`."""
    return (L2_PREFIX if self.norm == "l2" else "") + self.attack

  @property
  def label(self) -> str:
    """The paper's name: PGD-20, C&W-100, AutoAttack, …"""
    return parse_attack_name(self.attack).label

  @property
  def steps(self) -> Optional[int]:
    """N of `pgd<N>` / `cw<N>`, else None."""
    return parse_attack_name(self.attack).steps

  @property
  def family(self) -> str:
    """`pgd`, `cw`, `apgd`, `fab`, `square`, `autoattack`, `fgsm`."""
    return parse_attack_name(self.attack).family


def split_norm(name: str) -> tuple[str, str]:
  """`(registry name, norm)` of a config name: `l2-pgd20` → (`pgd20`, 'l2')."""
  if name.startswith(L2_PREFIX):
    return name[len(L2_PREFIX):], "l2"
  return name, "linf"


def parse_spec(name: str, evaluation: ml_collections.ConfigDict) -> AttackSpec:
  """The `AttackSpec` of a config name other than `clean` / `adaptive` (pure: nothing is
  built).

  Raises:
    ConfigError (a ValueError): an unknown attack name (from the registry).
  """
  attack, norm = split_norm(name)
  parsed = parse_attack_name(attack)
  threat = evaluation[norm]
  step_size = float(threat.step_size) if parsed.steps is not None else None
  return AttackSpec(attack, norm, float(threat.eps), step_size)


def build_attack(spec: AttackSpec, evaluation: ml_collections.ConfigDict):
  """The attack of `spec`: a jittable `Attack`, or an `AutoAttack` (host-side).

  `pgd<N>` / `cw<N>` run `evaluation.restarts` random starts, their step loop rolled or not
  as `evaluation.unroll`; Square (alone or in AutoAttack) runs `evaluation.square_queries`
  queries (5000 in standard AutoAttack); AutoAttack's chunks hold at most
  `evaluation.batch_size` points.
  """
  kwargs: dict[str, Any] = {}
  if spec.steps is not None:
    kwargs = {"step_size": spec.step_size, "restarts": evaluation.restarts,
              "unroll": evaluation.unroll}
  elif spec.attack == "square":
    kwargs = {"queries": evaluation.square_queries}
  elif spec.attack == "autoattack":
    kwargs = {"square_queries": evaluation.square_queries, "bucket": evaluation.batch_size}
  return get_attack(spec.attack, spec.eps, spec.norm, **kwargs)
