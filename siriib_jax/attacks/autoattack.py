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

Every component runs through the host-side runner (`runner.attack_points`): only on the
points still robust, each point alone with its own key, so that the robust flags and x_adv
are, point by point, those of attacking every point (its module doc has the chunks, the
padding, the keys and the sharding over a `mesh`). Keys: component i of the ensemble draws
from `fold_in(key_attacks, i)` (`key_clean, key_attacks = split(key)`).
`AutoAttack.__call__` is therefore not itself jittable; it returns NumPy arrays.
"""

import functools
import logging
import time
from typing import Callable, Dict, NamedTuple, Optional

import jax
import numpy as np
from jax.sharding import Mesh

from siriib_jax.attacks.apgd import apgd, apgd_targeted
from siriib_jax.attacks.base import required_classes
from siriib_jax.attacks.fab import fab_targeted
from siriib_jax.attacks.gradients import bind_objective
from siriib_jax.attacks.objectives import (DLR_REASON, DLR_TARGETED_REASON, cross_entropy,
                                           dlr)
from siriib_jax.attacks.runner import (COMPACT_EVERY, Progress, attack_points, map_points,
                                       num_classes, per_point)
from siriib_jax.attacks.square import square
from siriib_jax.attacks.threat_model import check_attack, check_images

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


@functools.lru_cache(maxsize=None)
def _clean_logits(eot_samples: int):
  """The per-point program of the clean logits (averaged over `eot_samples` draws if > 0),
  one per `eot_samples`, so that every `AutoAttack` reuses its compilations."""
  return per_point(
      lambda f, x, y, k, s: bind_objective(f, cross_entropy, y, eot_samples)(x, k)[1])


class AutoAttack:
  """`AutoAttack(eps, norm, version)(logits_fn, x, y, key) -> AutoAttackResult`.

  Args:
    eps: radius of the `norm` ε-ball.
    norm: 'linf' or 'l2'.
    version: 'standard' or 'rand'.
    bucket: the largest chunk an attack sees; None: the batch size of each call.
    attacks: overrides the ensemble (name -> `Attack`, run in order), e.g. for tests.
    square_queries: Square's query budget in the standard ensemble.
    compact_every: Square gathers the points still to attack every this many queries.
    mesh: chunks sharded over this mesh's `data` axis (module doc); None: one device.
  """

  def __init__(self, eps: float, norm: str = "linf", version: str = "standard",
               bucket: Optional[int] = None, attacks: Optional[dict] = None,
               square_queries: int = SQUARE_QUERIES, compact_every: int = COMPACT_EVERY,
               mesh: Optional[Mesh] = None):
    check_attack(eps, norm)
    self.eot_samples = EOT_SAMPLES if version == "rand" else 0
    self.attacks = components(eps, norm, version, square_queries) if attacks is None \
        else dict(attacks)
    self.min_classes = {name: required_classes(a) for name, a in self.attacks.items()}
    self.bucket, self.compact_every, self.mesh = bucket, compact_every, mesh
    self._clean = _clean_logits(self.eot_samples)

  def skipped(self, classes: int) -> Dict[str, str]:
    """name -> why, for the components this ensemble leaves out on a model with
    `classes` classes (those whose `min_classes` exceeds it)."""
    reasons = {"apgd-t": DLR_TARGETED_REASON, "apgd-dlr": DLR_REASON}
    return {name: f"{name} needs at least {k} classes, the model has {classes}"
                  + (f" ({reasons[name]})" if name in reasons else "")
            for name, k in self.min_classes.items() if k > classes}

  def __call__(self, logits_fn, x, y, key: jax.Array, *, index: Optional[np.ndarray] = None,
               only_robust: bool = True, mesh: Optional[Mesh] = None,
               progress: Optional[Callable[[str, Progress], None]] = None) -> AutoAttackResult:
    """Runs the ensemble on x (B, H, W, C) in [0, 1] with labels y (B,).

    Args:
      index: (B,) the points' positions in the evaluation, which fix their keys (module
        doc; default 0 … B − 1).
      only_robust: False attacks every point with every component (and target), for
        checking that the default gives the same result.
      mesh: overrides the constructor's `mesh`.
      progress: called with (component name, `Progress`) during the run.

    Raises:
      ValueError: x is not finite or not in [0, 1] (uint8 is divided by 255;
        `threat_model.check_images`).
    """
    mesh = self.mesh if mesh is None else mesh
    if not isinstance(logits_fn, jax.tree_util.Partial):
      logits_fn = jax.tree_util.Partial(logits_fn)
    x = check_images(x, "x")
    x, y = np.asarray(x, np.float32), np.asarray(y)
    index = np.arange(len(x)) if index is None else np.asarray(index)
    bucket = min(self.bucket or len(x), len(x)) or 1
    key_clean, key = jax.random.split(key)
    # K from the static shape of the logits: traced abstractly, nothing compiled.
    classes = num_classes(logits_fn, x, self.eot_samples)
    skipped = self.skipped(classes)
    for name, why in skipped.items():
      logging.warning("AutoAttack leaves out %s: %s.", name, why)
    clean_logits = map_points(self._clean, logits_fn, x, y, key_clean, index, bucket, mesh)
    # A point with a non-finite clean logit is no correct classification: a clean error.
    clean_success = ~(np.all(np.isfinite(clean_logits), axis=-1) &
                      (np.argmax(clean_logits, axis=-1) == y))
    success, x_adv, results = clean_success.copy(), x.copy(), {}
    everything = np.ones(len(x), bool)
    for i, (name, attack) in enumerate(self.attacks.items()):
      if name in skipped:
        continue
      started = time.perf_counter()
      attacked = ~success if only_robust else everything
      report = None if progress is None else functools.partial(progress, name)
      broken = attack_points(attack, logits_fn, x, y, jax.random.fold_in(key, i), attacked,
                             success, x_adv, index=index, bucket=bucket,
                             only_robust=only_robust, compact_every=self.compact_every,
                             eot_samples=self.eot_samples, mesh=mesh, progress=report)
      results[name] = ComponentResult(attacked, broken, time.perf_counter() - started)
    return AutoAttackResult(x_adv, success, clean_success, results, skipped)


def autoattack(eps: float, norm: str = "linf", version: str = "standard",
               bucket: Optional[int] = None, square_queries: int = SQUARE_QUERIES,
               compact_every: int = COMPACT_EVERY, mesh: Optional[Mesh] = None) -> AutoAttack:
  """AutoAttack `version` ('standard' or 'rand') in the `norm` ε-ball; see `AutoAttack`."""
  return AutoAttack(eps, norm, version, bucket, square_queries=square_queries,
                    compact_every=compact_every, mesh=mesh)
