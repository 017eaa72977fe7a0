"""The evaluation's attacks, named as in `config.evaluation.attacks` (paper §5.1, SPEC §5).

A name is `clean`, `adaptive` (the Table 4 family, `adaptive.py`), or a name of the attack
registry (`siriib_jax/attacks/registry.py`: `pgd20`, `cw100`, `autoattack`, `apgd-ce`,
`square`, …) under L∞, or the same prefixed `l2-` under L2. Each threat model takes its ε
and (for `pgd<N>` / `cw<N>`) its step size from `config.evaluation.linf` / `.l2`.

`EXECUTION` is the one table of how each registry name is built and called; the config
check (`parse_spec`) accepts exactly its names, and `build_attack` builds from it.
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import ml_collections

from siriib_jax.attacks.autoattack import AutoAttack
from siriib_jax.attacks.registry import get_attack, parse_attack_name
from siriib_jax.config_errors import ConfigError
from siriib_jax.attacks.threat_model import check_config_radius, check_config_step_size

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


def check_threat_model(evaluation: ml_collections.ConfigDict, norm: str,
                       image_shape: Optional[tuple[int, ...]] = None) -> None:
  """Checks `evaluation.<norm>.eps` and `.step_size` in [0, 1] pixel units
  (`attacks.threat_model`): under L∞ both in [0, 1]; under L2 both ≥ 0, ε at most
  √(H·W·C) when the `image_shape` (H, W, C) is given.

  Raises:
    ConfigError naming the key, e.g. `evaluation.linf.eps = 8` (write 8/255).
  """
  threat = evaluation[norm]
  check_config_radius(f"evaluation.{norm}.eps", threat.eps, norm, image_shape)
  check_config_step_size(f"evaluation.{norm}.step_size", threat.step_size, norm)


def validate_threat_models(evaluation: ml_collections.ConfigDict,
                           image_shape: Optional[tuple[int, ...]] = None) -> None:
  """Checks every radius and step size of `config.evaluation` before anything runs: both
  threat models (`check_threat_model`) and the checklist's `large_eps` (L∞, in [0, 1];
  its step is ε/4). svd_study, purification and the paper take their ε from these keys.

  Raises:
    ConfigError naming the first bad key and saying how to write it (8/255, not 8).
  """
  for norm in ("linf", "l2"):
    check_threat_model(evaluation, norm, image_shape)
  if "checklist" in evaluation:
    check_config_radius("evaluation.checklist.large_eps", evaluation.checklist.large_eps,
                        "linf")


def _ignore_key(logits_fn, x, key):
  del key
  return logits_fn(x)


def with_key(logits_fn) -> jax.tree_util.Partial:
  """`(x, key) -> logits_fn(x)`: a deterministic model as the stochastic
  `logits_fn(x, key)` an EOT attack calls (every draw the same, as the reference AutoAttack's
  EOT is on a deterministic model); a jit argument like `logits_fn` itself."""
  if not isinstance(logits_fn, jax.tree_util.Partial):
    logits_fn = jax.tree_util.Partial(logits_fn)
  return jax.tree_util.Partial(_ignore_key, logits_fn)


class OnDeterministicModel(AutoAttack):
  """An `AutoAttack` whose components call a stochastic `logits_fn(x, key)` (the `rand`
  version: APGD-CE and APGD-DLR with EOT over 20 draws, Croce & Hein 2020, §5), run on the
  deterministic `logits_fn(x)` the evaluation passes (`with_key`): the reference
  implementation's `version='rand'` on a deterministic model — 20 identical draws, so the
  same attacks as without EOT at 20 times APGD's cost. A model whose forward pass draws
  randomness is attacked with `attacks.get_attack('autoattack-rand', eps)` called on its own
  `logits_fn(x, key)`."""

  def __init__(self, attack: AutoAttack):  # pylint: disable=super-init-not-called
    self.__dict__.update(attack.__dict__)

  def __call__(self, logits_fn, x, y, key, **kwargs):
    return super().__call__(with_key(logits_fn), x, y, key, **kwargs)


class Execution(NamedTuple):
  """How the evaluation builds and runs one attack of the registry.

  Attributes:
    options: `config.evaluation -> keyword arguments` of its factory (`get_attack`; the step
      size of `pgd<N>` / `cw<N>` is added from the threat model).
    keyed: its components call a stochastic `logits_fn(x, key)`; the evaluation's
      deterministic model runs them through `OnDeterministicModel`.
  """
  options: Callable[[ml_collections.ConfigDict], dict]
  keyed: bool = False


def _no_options(evaluation):
  del evaluation
  return {}


# The one table of what the evaluation runs: each registry name (the step families `pgd`
# and `cw` by family), with how it is built and called. `parse_spec`, and so the config
# check, accepts exactly the names that have an entry here.
EXECUTION: dict[str, Execution] = {
    "pgd": Execution(lambda e: {"restarts": e.restarts, "unroll": e.unroll}),
    "cw": Execution(lambda e: {"restarts": e.restarts, "unroll": e.unroll}),
    "fgsm": Execution(_no_options),
    "apgd-ce": Execution(_no_options),
    "apgd-dlr": Execution(_no_options),
    "apgd-t": Execution(_no_options),
    "fab-t": Execution(_no_options),
    "square": Execution(lambda e: {"queries": e.square_queries}),
    "autoattack": Execution(lambda e: {"square_queries": e.square_queries,
                                       "bucket": e.batch_size}),
    "autoattack-rand": Execution(lambda e: {"bucket": e.batch_size}, keyed=True),
}


def execution_of(attack: str) -> Execution:
  """The `EXECUTION` entry of a registry name (`pgd20` → the `pgd` entry).

  Raises:
    ConfigError (a ValueError): the name is not in the registry, or the evaluation has no
      way to run it.
  """
  parsed = parse_attack_name(attack)
  entry = EXECUTION.get(parsed.family if parsed.steps is not None else attack)
  if entry is None:
    raise ConfigError(f"attack {attack!r} is in the registry but the evaluation cannot run "
                      f"it (no entry in attack_specs.EXECUTION)")
  return entry


def parse_spec(name: str, evaluation: ml_collections.ConfigDict) -> AttackSpec:
  """The `AttackSpec` of a config name other than `clean` / `adaptive` (pure: nothing is
  built).

  Raises:
    ConfigError (a ValueError): an unknown attack name (from the registry), or a radius or
      step size of its threat model outside [0, 1] pixel units (`check_threat_model`).
  """
  attack, norm = split_norm(name)
  parsed = parse_attack_name(attack)
  execution_of(attack)  # The evaluation can run it.
  check_threat_model(evaluation, norm)
  threat = evaluation[norm]
  step_size = float(threat.step_size) if parsed.steps is not None else None
  return AttackSpec(attack, norm, float(threat.eps), step_size)


def checklist_spec(evaluation: ml_collections.ConfigDict) -> Optional[AttackSpec]:
  """The `AttackSpec` of the checklist's large-ε run (`checklist.large_eps_attack`, a
  registry name, under L∞ at ε = `checklist.large_eps`, step ε/4), or None when
  `large_eps` is 0 (pure: nothing is built).

  Raises:
    ConfigError naming `evaluation.checklist.large_eps_attack` if the evaluation cannot run
      it (`execution_of`).
  """
  checks = evaluation.checklist
  if not checks.large_eps > 0:
    return None
  name = checks.large_eps_attack
  try:
    execution_of(name)
  except ValueError as error:
    raise ConfigError(f"config.evaluation.checklist.large_eps_attack = {name!r} is not valid: "
                      f"{error}. It is a registry name run under L∞, e.g. 'pgd20'.") from None
  steps = parse_attack_name(name).steps
  eps = float(checks.large_eps)
  return AttackSpec(name, "linf", eps, eps / 4 if steps is not None else None)


def build_attack(spec: AttackSpec, evaluation: ml_collections.ConfigDict):
  """The attack of `spec` as its `EXECUTION` entry says: a jittable `Attack`, or an
  `AutoAttack` (host-side), to be called on the evaluation's deterministic
  `logits_fn(x)`.

  `pgd<N>` / `cw<N>` run `evaluation.restarts` random starts, their step loop rolled or not
  as `evaluation.unroll`; Square (alone or in AutoAttack) runs `evaluation.square_queries`
  queries (5000 in standard AutoAttack); AutoAttack's chunks hold at most
  `evaluation.batch_size` points; `autoattack-rand` runs on `logits_fn(x)` as the reference
  does on a deterministic model (`OnDeterministicModel`).
  """
  execution = execution_of(spec.attack)
  kwargs: dict[str, Any] = execution.options(evaluation)
  if spec.steps is not None:
    kwargs["step_size"] = spec.step_size
  attack = get_attack(spec.attack, spec.eps, spec.norm, **kwargs)
  return OnDeterministicModel(attack) if execution.keyed else attack
