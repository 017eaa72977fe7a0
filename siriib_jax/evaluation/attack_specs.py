"""The evaluation's attacks, named as in `config.evaluation.attacks` (paper §5.1, SPEC §5).

A name is `clean`, `adaptive` (the Table 4 family, `adaptive.py`), or a name of the attack
registry (`siriib_jax.attacks.get_attack`: `pgd20`, `cw100`, `autoattack`, `apgd-ce`,
`square`, …) under L∞, or the same prefixed `l2-` under L2. Each threat model takes its ε
and (for `pgd<N>` / `cw<N>`) its step size from `config.evaluation.linf` / `.l2`.
"""

import dataclasses
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import ml_collections

from siriib_jax.attacks import get_attack
from siriib_jax.attacks.autoattack import AutoAttack, components
from siriib_jax.attacks.square import square

L2_PREFIX = "l2-"
_LABELS = {"fgsm": "FGSM", "autoattack": "AutoAttack", "autoattack-rand": "AutoAttack-rand",
           "apgd-ce": "APGD-CE", "apgd-dlr": "APGD-DLR", "apgd-t": "APGD-T", "fab-t": "FAB-T",
           "square": "Square"}
WHITE_BOX_FAMILIES = ("fgsm", "pgd", "cw", "apgd", "fab")


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
    match = re.fullmatch(r"(pgd|cw)(\d+)", self.attack)
    if match:
      return {"pgd": "PGD", "cw": "C&W"}[match[1]] + f"-{match[2]}"
    return _LABELS.get(self.attack, self.attack)

  @property
  def steps(self) -> Optional[int]:
    """N of `pgd<N>` / `cw<N>`, else None."""
    match = re.fullmatch(r"(?:pgd|cw)(\d+)", self.attack)
    return int(match[1]) if match else None

  @property
  def family(self) -> str:
    """`pgd`, `cw`, `apgd`, `fab`, `square`, `autoattack`, `fgsm`."""
    return re.match(r"[a-z]+", self.attack)[0]


def parse_spec(name: str, evaluation: ml_collections.ConfigDict) -> AttackSpec:
  """The `AttackSpec` of a config name other than `clean` / `adaptive`.

  Raises:
    ValueError: an unknown attack name (from the registry).
  """
  norm = "l2" if name.startswith(L2_PREFIX) else "linf"
  attack = name[len(L2_PREFIX):] if norm == "l2" else name
  threat = evaluation[norm]
  spec = AttackSpec(attack, norm, float(threat.eps))
  if spec.steps is not None:
    spec = dataclasses.replace(spec, step_size=float(threat.step_size))
  build_attack(spec, evaluation)  # Fails early on an unknown name.
  return spec


def build_attack(spec: AttackSpec, evaluation: ml_collections.ConfigDict):
  """The attack of `spec`: a jittable `Attack`, or an `AutoAttack` (host-side).

  `pgd<N>` / `cw<N>` run `evaluation.restarts` random starts, their step loop rolled or not
  as `evaluation.unroll`; Square (alone or in AutoAttack) runs `evaluation.square_queries`
  queries (5000 in standard AutoAttack).
  """
  if spec.attack == "autoattack":
    attacks = dict(components(spec.eps, spec.norm))
    attacks["square"] = square(spec.eps, spec.norm, queries=evaluation.square_queries)
    return AutoAttack(spec.eps, spec.norm, attacks=attacks, bucket=evaluation.batch_size)
  kwargs: dict[str, Any] = {}
  if spec.steps is not None:
    kwargs = {"step_size": spec.step_size, "restarts": evaluation.restarts,
              "unroll": evaluation.unroll}
  elif spec.attack == "square":
    kwargs = {"queries": evaluation.square_queries}
  return get_attack(spec.attack, spec.eps, spec.norm, **kwargs)


def _logits(output) -> jax.Array:
  return getattr(output, "logits", output)


@dataclasses.dataclass(frozen=True)
class ModelFn:
  """`(variables, x (B, H, W, C) in [0, 1]) -> logits (B, K)`, or the model's whole output
  with `outputs=True`. Hashable (by the module), so that `jax.tree_util.Partial(ModelFn(
  model), variables)` is a jit argument with the variables as traced leaves.

  The model is any Flax module with `apply(variables, x, train=False)` returning logits or
  a `ModelOutput`.
  """
  model: nn.Module
  outputs: bool = False

  def __call__(self, variables, x):
    output = self.model.apply(variables, x, train=False)
    return output if self.outputs else _logits(output).astype("float32")


def logits_fn(model: nn.Module, variables) -> jax.tree_util.Partial:
  """`x -> logits` with `variables` as pytree leaves (no recompilation per parameters)."""
  return jax.tree_util.Partial(ModelFn(model), variables)


def outputs_fn(model: nn.Module, variables) -> jax.tree_util.Partial:
  """`x -> ModelOutput`, as `logits_fn`."""
  return jax.tree_util.Partial(ModelFn(model, outputs=True), variables)
