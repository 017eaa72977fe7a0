"""The attack interface every attack in `siriib_jax.attacks` follows.

An attack is built like an optax transformation: a factory takes the hyper-parameters and
returns an `Attack`, a pure function `(logits_fn, x, y, key) -> AttackResult` that is safe
to call inside `jax.jit` and deterministic for a PRNG `key`. Targeted attacks (APGD-T,
FAB-T) return a `TargetedAttack`: such an `Attack` that also exposes its run against one
target class, so that AutoAttack can attack each target only on the points still robust.

An attack defined only for K ≥ k classes (one whose loss reads the k-th largest logit, e.g.
APGD-DLR, APGD-T) says so in `min_classes` (`required_classes` reads it; 2 by default) and
raises `objectives.ClassCountError` when traced on logits with fewer classes.
"""

import dataclasses
from typing import Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp

# Images (B, H, W, C) in [0, 1] → logits (B, num_classes).
LogitsFn = Callable[[jnp.ndarray], jnp.ndarray]


def required_classes(attack) -> int:
  """The fewest classes K `attack` (an `Attack` or `TargetedAttack`) is defined for: its
  `min_classes`, else 2."""
  return int(getattr(attack, "min_classes", 2))


class AttackResult(NamedTuple):
  """x_adv: (B, H, W, C) in [0, 1] and inside the ε-ball around x.
  success: (B,) bool, True where the model misclassifies x_adv (for a targeted attack:
  where it misclassifies, whichever class it reaches)."""
  x_adv: jnp.ndarray
  success: jnp.ndarray


class Attack(Protocol):

  def __call__(self, logits_fn: LogitsFn, x: jnp.ndarray, y: jnp.ndarray,
               key: jax.Array) -> AttackResult:
    ...


@dataclasses.dataclass(frozen=True)
class TargetedAttack:
  """An `Attack` made of runs against one target class after another.

  Attributes:
    all_targets: the `Attack` over every target (what calling this object runs).
    single_target: `(logits_fn, x, y, key, rank) -> AttackResult`, the runs against the
      class ranked `rank` by the clean logits (1: the most likely class after the top one;
      an int32 scalar, traced: one compilation serves every rank).
    n_target_classes: the ranks 1 … n_target_classes are attacked (capped at K − 1 for K
      classes).
    min_classes: the fewest classes K the attack is defined for (APGD-T: 4, its targeted
      DLR loss reads the 4th largest logit); below it the attack raises
      `objectives.ClassCountError` when traced.
  """
  all_targets: Attack
  single_target: Callable[..., AttackResult]
  n_target_classes: int
  min_classes: int = 2

  def __call__(self, logits_fn: LogitsFn, x: jnp.ndarray, y: jnp.ndarray,
               key: jax.Array) -> AttackResult:
    return self.all_targets(logits_fn, x, y, key)
