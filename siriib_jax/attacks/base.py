"""The attack interface every attack in `siriib_jax.attacks` follows.

An attack is built like an optax transformation: a factory takes the hyper-parameters and
returns an `Attack`, a pure function `(logits_fn, x, y, key) -> AttackResult` that is safe
to call inside `jax.jit` and deterministic for a PRNG `key`. Targeted attacks (APGD-T,
FAB-T) return a `TargetedAttack`: such an `Attack` that also exposes its run against one
target class, so that AutoAttack can attack each target only on the points still robust.
A query-based attack (Square) returns a `QueryAttack`: an `Attack` whose query loop can
also be run in segments, so that the points still to attack can be gathered between them.
An iterative gradient attack that stops mattering for a point once it is broken (APGD,
APGD-T) exposes its runs likewise, as a `Stepped` (`attack.stepped`, or the `stepped` field
of a `TargetedAttack`).

An attack defined only for K ≥ k classes (one whose loss reads the k-th largest logit, e.g.
APGD-DLR, APGD-T) says so in `min_classes` (`required_classes` reads it; 2 by default) and
raises `objectives.ClassCountError` when traced on logits with fewer classes.
"""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Protocol, Tuple

import jax
import jax.numpy as jnp

# Images (B, H, W, C) in [0, 1] → logits (B, num_classes).
LogitsFn = Callable[[jnp.ndarray], jnp.ndarray]


def _plain(value: Any) -> bool:
  """Whether an attack factory's argument is a plain value (a number, string, bool, None, a
  function without captured state such as `objectives.cross_entropy`, or a tuple of them),
  which can key a cache without keeping a model, its arrays or a trace alive."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return True
  if isinstance(value, tuple):
    return all(_plain(v) for v in value)
  return callable(value) and getattr(value, "__closure__", None) is None and hasattr(
      value, "__code__")


def reusable(factory: Callable) -> Callable:
  """Memoises an attack factory on plain arguments (`_plain`), so that building the same
  attack again (a second evaluation in one process) returns the same `Attack`, whose jitted
  programs the runner has compiled already (`runner._compiled`). A call with any other
  argument (e.g. an `ImageLoss` closing over a model) builds a new attack, uncached."""
  cached = functools.lru_cache(maxsize=32)(factory)

  @functools.wraps(factory)
  def build(*args, **kwargs):
    if all(_plain(v) for v in (*args, *kwargs.values())):
      return cached(*args, **kwargs)
    return factory(*args, **kwargs)

  return build


def misclassified(logits: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """(B,) bool: the attack's success test on logits (B, K) and labels (B,):
  `argmax logits ≠ y` where every logit of the point is finite, False where one is NaN or
  ±inf (the argmax of NaN logits is class 0, which is no adversarial example). Every attack
  and the host-side runner decide success with it."""
  finite = jnp.all(jnp.isfinite(logits), axis=-1)
  return finite & (jnp.argmax(logits, axis=-1) != y)


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
class Stepped:
  """The runs of an iterative attack, as pieces a host-side runner can run in segments of
  iterations, leaving out between two segments the points already broken
  (`runner.attack_points`). A point's result is its first successful iterate once it
  has one, so its later iterations change nothing; every iteration draws its randomness
  from the run's key and its own number, so the segments give the result of one loop.

  Attributes:
    advance: `(logits_fn, x, y, key, rank, restart, state, start, stop) -> state`,
      iterations start … stop − 1 (int32 scalars, traced) of run `restart` (0 … restarts −
      1) against the class ranked `rank` (1 … K − 1, as in `TargetedAttack.single_target`;
      0, unused, for an untargeted attack); `state` is a pytree of per-point arrays
      (leading B) with a (B,) bool field `success`. Iteration −1 is the run's start:
      start = −1 begins the run from `fresh_state(x)`. With the same `key`, the run is that
      of calling the attack (untargeted) or its `single_target` with `rank` (targeted).
    fresh_state: `x (B, H, W, C) -> state`, NumPy arrays, what a run begins from.
    finish: `state -> gradients.Candidate` (x_adv, success, loss): the run's result.
    steps: iterations per run.
    starts: the iterations at which a runner cuts a run (−1 first, each < steps).
    restarts: runs per target; a success beats a failure, between two failures the higher
      loss is kept (`gradients.worst_case`).
  """
  advance: Callable
  fresh_state: Callable
  finish: Callable
  steps: int
  starts: Tuple[int, ...]
  restarts: int


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
    stepped: `single_target`'s runs in pieces (`Stepped`), or None.
  """
  all_targets: Attack
  single_target: Callable[..., AttackResult]
  n_target_classes: int
  min_classes: int = 2
  stepped: Optional[Stepped] = None

  def __call__(self, logits_fn: LogitsFn, x: jnp.ndarray, y: jnp.ndarray,
               key: jax.Array) -> AttackResult:
    return self.all_targets(logits_fn, x, y, key)


class SearchState(NamedTuple):
  """The per-point state of one restart of a query loop (`QueryAttack`).

  x: (B, H, W, C) the best point found so far; margin: (B,) its margin
  z_y − max_{j≠y} z_j (> 0 while the point is still classified correctly); invalid: (B,)
  bool, a NaN margin was met on the point."""
  x: jnp.ndarray
  margin: jnp.ndarray
  invalid: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class QueryAttack:
  """An `Attack` made of a query loop that can stop and resume (Square).

  Calling the object runs every restart to the end (`all_queries`). The pieces let a
  host-side runner run the same iterations in segments, each on the points still to attack
  (`runner.attack_points`); every iteration of a point draws its randomness from its
  own key and iteration number, so the segments give the result of one loop.

  Attributes:
    all_queries: the `Attack` over every restart and query.
    margin: `(logits (B, K), y (B,)) -> (B,)` the margin z_y − max_{j≠y} z_j the loop
      lowers, a function of the logits alone (so that one forward pass gives it and the
      verdict: `runner._score`).
    advance: `(logits_fn, x, y, key, restart, state, start, stop) -> SearchState`,
      iterations start … stop − 1 (int32 scalars, traced) of restart `restart` (an int32
      scalar, traced) on every point of the batch; a point stops once misclassified.
      Iteration −1 draws the initial perturbation: start = −1 begins the restart from
      `fresh_state(x)`.
    fresh_state: `x (B, H, W, C) -> SearchState`, NumPy, the state a restart begins from.
    queries: iterations per restart.
    restarts: restarts; restart r attacks the points whose best margin over restarts
      0 … r − 1 (the clean margin for r = 0) is still > 0, and a point keeps the lowest
      margin over restarts.
  """
  all_queries: Attack
  margin: Callable[..., jnp.ndarray]
  advance: Callable[..., SearchState]
  fresh_state: Callable[..., SearchState]
  queries: int
  restarts: int

  def __call__(self, logits_fn: LogitsFn, x: jnp.ndarray, y: jnp.ndarray,
               key: jax.Array) -> AttackResult:
    return self.all_queries(logits_fn, x, y, key)
