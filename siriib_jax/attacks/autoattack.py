"""AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML, §5).

* `standard`: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5000 queries), in
  that order, for deterministic models `logits_fn(x) -> logits`.
* `rand`: APGD-CE and APGD-DLR, each with EOT over 20 draws (§5, "randomized defenses"), for
  stochastic models `logits_fn(x, key) -> logits`. Predictions (clean and final) are the
  argmax of the logits averaged over the same 20 draws.

Points misclassified on clean inputs count as broken (x_adv = x). Each attack then runs only
on the points still robust, and a point broken by any attack keeps that attack's x_adv, so
AutoAttack's robustness is the logical AND of its components' (the worst case per example).
A targeted attack (`base.TargetedAttack`: APGD-T, FAB-T) runs one target class after
another, each on the points still robust, as the reference implementation does.

Class counts: a component defined only for K ≥ k classes (`base.required_classes`: APGD-T
needs 4, its targeted DLR loss reading the 4th largest logit; APGD-DLR needs 3) is not run
on a model with fewer classes; the result's `skipped` names it with the reason, and a
warning is logged. This is the ensemble's defined substitute: with K = 2, for instance, the
targeted attack against the one other class is what APGD-CE (whose cross-entropy is then
monotone in the margin) and FAB-T already run, and the DLR ratio would be a constant ±1
with zero gradient. The class count is read from the static shape of the logits
(`jax.eval_shape`) before anything is compiled. The reference implementation only warns
and runs the attack on the out-of-range logit.

Selection runs on the host, since shapes inside `jit` are static: the robust points are
gathered, cut into chunks of at most `bucket` (default: the batch size) and each chunk is
padded, by repeating its first point, to the next size with at most four significant bits
(m · 2^k with m < 16, at most `bucket`): a chunk carries less than 1/8 of padding, and an
attack, jitted once, compiles for at most 8 chunk sizes per octave of chunk size (16 below
16 points) — in practice one or two per attack and evaluation, as only the last chunk of
each call is partial.
Pass `logits_fn` as a `jax.tree_util.Partial(apply_fn, params)`: it is then a jit argument
(a plain function is wrapped, and any arrays it closes over become compile-time constants).

`AutoAttack.__call__` is therefore not itself jittable; it returns NumPy arrays.
"""

import functools
import logging
import time
from typing import Dict, NamedTuple, Optional

import jax
import numpy as np

from siriib_jax.attacks.apgd import apgd, apgd_targeted
from siriib_jax.attacks.base import TargetedAttack, required_classes
from siriib_jax.attacks.fab import fab_targeted
from siriib_jax.attacks.gradients import bind_objective
from siriib_jax.attacks.objectives import (DLR_REASON, DLR_TARGETED_REASON, cross_entropy,
                                           dlr)
from siriib_jax.attacks.square import square

VERSIONS = ("standard", "rand")
EOT_SAMPLES = 20
SQUARE_QUERIES = 5000  # Square's budget in the standard ensemble (Croce & Hein 2020).


class ComponentResult(NamedTuple):
  """One attack of the ensemble: attacked (B,) bool, the points it ran on (those still
  robust); success (B,) bool, the points it broke (False where not attacked); seconds, its
  wall time (compilation included)."""
  attacked: np.ndarray
  success: np.ndarray
  seconds: float


class AutoAttackResult(NamedTuple):
  """x_adv: (B, H, W, C); success: (B,) bool, clean misclassification included;
  clean_success: (B,) bool, misclassified without attack; components: name ->
  `ComponentResult`, in the order run; skipped: name -> why, for the components not run
  because the model has fewer classes than they need (module doc)."""
  x_adv: np.ndarray
  success: np.ndarray
  clean_success: np.ndarray
  components: Dict[str, ComponentResult]
  skipped: Dict[str, str] = {}


def components(eps: float, norm: str = "linf", version: str = "standard",
               square_queries: int = SQUARE_QUERIES):
  """The ensemble of `version`, as an ordered dict name -> `Attack`; Square (standard
  only) runs `square_queries` queries (5,000 in Croce & Hein 2020)."""
  if version == "standard":
    return {
        "apgd-ce": apgd(eps, norm),
        "apgd-t": apgd_targeted(eps, norm),
        "fab-t": fab_targeted(eps, norm),
        "square": square(eps, norm, queries=square_queries),
    }
  if version == "rand":
    return {
        "apgd-ce": apgd(eps, norm, eot_samples=EOT_SAMPLES),
        "apgd-dlr": apgd(eps, norm, loss=dlr, eot_samples=EOT_SAMPLES),
    }
  raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")


# A chunk is padded to the next size with at most this many significant bits.
SIGNIFICANT_BITS = 4


def bucket_size(n: int, bucket: int) -> int:
  """The padded size of a chunk of 1 ≤ n ≤ bucket points: n rounded up to m · 2^k with
  m < 2^SIGNIFICANT_BITS (less than n / 8 of padding), at most `bucket`."""
  shift = max(n.bit_length() - SIGNIFICANT_BITS, 0)
  return min(-(-n >> shift) << shift, bucket)


class AutoAttack:
  """`AutoAttack(eps, norm, version)(logits_fn, x, y, key) -> AutoAttackResult`.

  Args:
    eps: radius of the `norm` ball.
    norm: 'linf' or 'l2'.
    version: 'standard' or 'rand'.
    bucket: the largest chunk an attack sees; None: the batch size of each call.
    attacks: overrides the ensemble (name -> `Attack`, run in order), e.g. for tests.
    square_queries: Square's query budget in the standard ensemble.
  """

  def __init__(self, eps: float, norm: str = "linf", version: str = "standard",
               bucket: Optional[int] = None, attacks: Optional[dict] = None,
               square_queries: int = SQUARE_QUERIES):
    self.eot_samples = EOT_SAMPLES if version == "rand" else 0
    if attacks is None:
      attacks = components(eps, norm, version, square_queries)
    # name -> (jitted attack, its target ranks or None); a targeted attack is called once
    # per rank, with the rank as its last argument.
    self.attacks, self.min_classes = {}, {}
    for name, attack in attacks.items():
      if isinstance(attack, TargetedAttack):
        self.attacks[name] = (jax.jit(attack.single_target), attack.n_target_classes)
      else:
        self.attacks[name] = (jax.jit(attack), None)
      self.min_classes[name] = required_classes(attack)
    self.bucket = bucket

  def skipped(self, classes: int) -> Dict[str, str]:
    """name -> why, for the components this ensemble leaves out on a model with
    `classes` classes (those whose `min_classes` exceeds it)."""
    reasons = {"apgd-t": DLR_TARGETED_REASON, "apgd-dlr": DLR_REASON}
    return {name: f"{name} needs at least {k} classes, the model has {classes}"
                  + (f" ({reasons[name]})" if name in reasons else "")
            for name, k in self.min_classes.items() if k > classes}

  @functools.partial(jax.jit, static_argnums=0)
  def _clean_logits(self, logits_fn, x, y, key):
    return bind_objective(logits_fn, cross_entropy, y, self.eot_samples)(x, key)[1]

  def __call__(self, logits_fn, x, y, key: jax.Array) -> AutoAttackResult:
    """x: (B, H, W, C) in [0, 1]; y: (B,) int labels."""
    if not isinstance(logits_fn, jax.tree_util.Partial):
      logits_fn = jax.tree_util.Partial(logits_fn)
    x, y = np.asarray(x), np.asarray(y)
    bucket = self.bucket or len(x)
    key_clean, key = jax.random.split(key)
    # K from the static shape of the clean logits: traced (once, cached), nothing compiled.
    classes = AutoAttack._clean_logits.eval_shape(self, logits_fn, x, y, key_clean).shape[-1]
    skipped = self.skipped(classes)
    for name, why in skipped.items():
      logging.warning("AutoAttack leaves out %s: %s.", name, why)
    clean_logits = np.asarray(self._clean_logits(logits_fn, x, y, key_clean))
    clean_success = np.argmax(clean_logits, axis=-1) != y
    success, x_adv, results = clean_success.copy(), x.copy(), {}
    for i, (name, (attack, n_targets)) in enumerate(self.attacks.items()):
      if name in skipped:
        continue
      started = time.perf_counter()
      attacked = ~success
      if n_targets is None:
        broken = self._attack_robust(attack, (), logits_fn, x, y, attacked, x_adv,
                                     jax.random.fold_in(key, i), bucket)
      else:
        broken = np.zeros_like(success)
        for rank in range(1, min(n_targets, classes - 1) + 1):
          broken |= self._attack_robust(
              attack, (np.int32(rank),), logits_fn, x, y, attacked & ~broken, x_adv,
              jax.random.fold_in(jax.random.fold_in(key, i), rank), bucket)
      success |= broken
      results[name] = ComponentResult(attacked, broken, time.perf_counter() - started)
    return AutoAttackResult(x_adv, success, clean_success, results, skipped)

  @staticmethod
  def _attack_robust(attack, extra_args, logits_fn, x, y, robust, x_adv, key,
                     bucket) -> np.ndarray:
    """Runs `attack(logits_fn, x, y, key, *extra_args)` on the points where `robust`, in
    padded chunks (module doc); writes the x_adv of the points it breaks into `x_adv` and
    returns them as a (B,) bool mask."""
    broken = np.zeros_like(robust)
    points = np.flatnonzero(robust)
    for c, start in enumerate(range(0, len(points), bucket)):
      chunk = points[start:start + bucket]
      padding = bucket_size(len(chunk), bucket) - len(chunk)
      padded = np.concatenate([chunk, np.full(padding, chunk[0])])
      result = attack(logits_fn, x[padded], y[padded], jax.random.fold_in(key, c),
                      *extra_args)
      chunk_success = np.asarray(result.success)[:len(chunk)]
      broken[chunk] = chunk_success
      x_adv[chunk[chunk_success]] = np.asarray(result.x_adv)[:len(chunk)][chunk_success]
    return broken


def autoattack(eps: float, norm: str = "linf", version: str = "standard",
               bucket: Optional[int] = None,
               square_queries: int = SQUARE_QUERIES) -> AutoAttack:
  """AutoAttack `version` ('standard' or 'rand') in the `norm` ε-ball; see `AutoAttack`."""
  return AutoAttack(eps, norm, version, bucket, square_queries=square_queries)
