"""Auto-PGD: APGD-CE, APGD-DLR and APGD-T (Croce & Hein 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", ICML, §3,
Algorithm 1), under L∞ and L2.

From a random point x⁽⁰⁾ of the ε-ball ∩ [0, 1], with step η⁽⁰⁾ = 2ε and α = 0.75:

    z⁽ᵏ⁺¹⁾ = Π(x⁽ᵏ⁾ + η⁽ᵏ⁾ s(∇f(x⁽ᵏ⁾)))
    x⁽ᵏ⁺¹⁾ = Π(x⁽ᵏ⁾ + α (z⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾))     (α = 1 at k = 0)

with s the sign (L∞) or the L2-normalised gradient. At the checkpoints w_j = ⌈p_j N⌉,
p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) (§3.2), the step is
halved, per example, if
  1. fewer than ρ (w_j − w_{j−1}) of the steps since w_{j−1} increased f (ρ = 0.75), or
  2. η was not halved at w_{j−1} and the best loss has not increased since then;
and a halved example restarts from its best point x_max (with zero momentum; the reference
implementation keeps the old momentum term). Every quantity is per example.

Returned per example: the first successful iterate if there is one, else the point of
highest loss. `restarts` runs from fresh random points keep the worst case
(`gradients.worst_case`). With `eot_samples > 0` the model is stochastic, `logits_fn(x, key)`,
and loss, gradient and logits are EOT averages (`gradients.bind_objective`); success then
means the averaged logits misclassify. Non-finite gradient entries are 0
(`gradients.finite_gradient`) and a success needs finite logits (`base.misclassified`).
"""

from typing import List, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from siriib_jax.attacks.base import (Attack, AttackResult, Stepped, TargetedAttack,
                                     misclassified, reusable)
from siriib_jax.attacks.gradients import (Candidate, Loss, bind_objective, loop_unroll,
                                          num_classes, random_start, run_key,
                                          value_logits_and_grad, worst_of_runs)
from siriib_jax.attacks.objectives import (DLR_REASON, DLR_TARGETED_REASON, FEW_CLASSES_FIX,
                                           cross_entropy, dlr, dlr_targeted, min_classes,
                                           require_classes)
from siriib_jax.attacks.projections import NORMS, normalized_step, project
from siriib_jax.attacks.threat_model import check_attack


def checkpoints(steps: int) -> List[int]:
  """The iterations w_j = ⌈p_j · steps⌉ ≤ steps (j ≥ 1) after which the step size is checked.

  p_j is kept in hundredths so that the schedule is exact: for 100 steps,
  [22, 41, 57, 70, 80, 87, 93, 99]; for 10, [3, 5, 6, 7, 8, 9, 10].
  """
  result, previous, current = [], 0, 22
  while -(-current * steps // 100) <= steps:
    w = -(-current * steps // 100)
    if not result or w > result[-1]:  # For small `steps` two p_j can round alike.
      result.append(w)
    previous, current = current, current + max(current - previous - 3, 6)
  return result


class ApgdState(NamedTuple):
  """One APGD run between two iterations, per example (leading axis B): what a host-side
  runner carries from one segment of iterations to the next (`base.Stepped`).

  x, x_prev: the current and previous iterate; loss, grad: the objective and its gradient
  at x; x_best, loss_best, grad_best: the iterate of highest loss so far; x_success: the
  first misclassified iterate; success: one was found; eta: the step size; increases: steps
  that raised the loss since the last checkpoint; loss_best_at_check, halved_at_check: the
  best loss and the halving decision at the last checkpoint; target: the target class of
  APGD-T (0, unused, for untargeted APGD)."""
  x: jnp.ndarray
  x_prev: jnp.ndarray
  loss: jnp.ndarray
  grad: jnp.ndarray
  x_best: jnp.ndarray
  loss_best: jnp.ndarray
  grad_best: jnp.ndarray
  x_success: jnp.ndarray
  success: jnp.ndarray
  eta: jnp.ndarray
  increases: jnp.ndarray
  loss_best_at_check: jnp.ndarray
  halved_at_check: jnp.ndarray
  target: jnp.ndarray


def fresh_state(x, xp=np) -> ApgdState:
  """The state a run begins from (`_advance` with start = −1): zeros of the shapes and
  dtypes of one run on x (B, H, W, C); NumPy arrays (`xp=np`, what a runner updates in
  place) or `jax.numpy` ones (`xp=jnp`, inside a traced function)."""
  images = lambda: xp.zeros(x.shape, x.dtype)  # One array per field: updated in place.
  per_point = lambda dtype: xp.zeros(x.shape[:1], dtype)
  return ApgdState(x=images(), x_prev=images(), loss=per_point(np.float32), grad=images(),
                   x_best=images(), loss_best=per_point(np.float32), grad_best=images(),
                   x_success=images(), success=per_point(bool), eta=per_point(x.dtype),
                   increases=per_point(np.float32), loss_best_at_check=per_point(np.float32),
                   halved_at_check=per_point(bool), target=per_point(np.int32))


def _start(x0, y, loss0, logits0, grad0, target, eps) -> ApgdState:
  """The state of one run (Algorithm 1) at its random start x⁽⁰⁾, before iteration 0."""
  return ApgdState(
      x=x0, x_prev=x0, loss=loss0, grad=grad0,
      x_best=x0, loss_best=loss0, grad_best=grad0,
      x_success=x0, success=misclassified(logits0, y),
      eta=jnp.full(y.shape, 2.0 * eps, x0.dtype),
      increases=jnp.zeros(y.shape, jnp.float32),
      loss_best_at_check=loss0, halved_at_check=jnp.zeros(y.shape, bool),
      target=target)


def _advance(objective, x, y, key, state: ApgdState, start, stop, *, eps, norm, steps, rho,
             momentum, unroll) -> ApgdState:
  """Iterations start … stop − 1 of the run keyed by `key`. Iteration −1 (start = −1, from
  `fresh_state`) is the random start x⁽⁰⁾ (drawn from `split(key)[0]`) and its loss and
  gradient; iteration i ≥ 0 draws from `fold_in(split(key)[1], i)` whichever segment it runs
  in, so segments give the state of one loop. `start`, `stop` may be traced (then `unroll`
  must be 1)."""
  check = np.zeros(steps, bool)
  interval = np.ones(steps, np.float32)
  previous = 0
  for w in checkpoints(steps):
    check[w - 1], interval[w - 1], previous = True, w - previous, w
  check, interval = jnp.asarray(check), jnp.asarray(interval)
  key_start, key_eot = jax.random.split(key)
  expand = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))

  def update(i, s: ApgdState, x_new, loss, logits, grad) -> ApgdState:
    newly = misclassified(logits, y) & ~s.success
    improved = loss > s.loss_best
    where = lambda c, u, v: jnp.where(expand(c) if u.ndim > 1 else c, u, v)
    s = s._replace(
        x_success=where(newly, x_new, s.x_success), success=s.success | newly,
        x_best=where(improved, x_new, s.x_best),
        loss_best=jnp.where(improved, loss, s.loss_best),
        grad_best=where(improved, grad, s.grad_best),
        increases=s.increases + (loss > s.loss))
    # Step-size check (§3.2); `halve` is False away from the checkpoints.
    halve = check[i] & ((s.increases < rho * interval[i]) |
                        (~s.halved_at_check & (s.loss_best <= s.loss_best_at_check)))
    return s._replace(
        x=where(halve, s.x_best, x_new),
        x_prev=where(halve, s.x_best, s.x),
        loss=jnp.where(halve, s.loss_best, loss),
        grad=where(halve, s.grad_best, grad),
        eta=jnp.where(halve, s.eta / 2, s.eta),
        increases=jnp.where(check[i], 0.0, s.increases),
        loss_best_at_check=jnp.where(check[i], s.loss_best, s.loss_best_at_check),
        halved_at_check=jnp.where(check[i], halve, s.halved_at_check))

  def step(i, s: ApgdState) -> ApgdState:
    begins = i < 0

    def momentum_step():
      a = jnp.where(i == 0, 1.0, momentum).astype(x.dtype)
      z = project(s.x + expand(s.eta) * normalized_step(s.grad, norm), x, eps, norm)
      return project(s.x + a * (z - s.x) + (1 - a) * (s.x - s.x_prev), x, eps, norm)

    x_new = jax.lax.cond(begins, lambda: random_start(key_start, x, eps, norm),
                         momentum_step)
    loss, logits, grad = value_logits_and_grad(
        objective, x_new, jax.random.fold_in(key_eot, jnp.where(begins, steps, i)))
    start = _start(x_new, y, loss, logits, grad, s.target, eps)
    return jax.tree_util.tree_map(lambda new, old: jnp.where(begins, new.astype(old.dtype), old),
                                  start, update(i, s, x_new, loss, logits, grad))

  return jax.lax.fori_loop(start, stop, step, state, unroll=unroll)


def _finish(state: ApgdState) -> Candidate:
  """The run's result: the first successful iterate if there is one, else the point of
  highest loss."""
  expand = lambda v: v.reshape((-1,) + (1,) * (state.x.ndim - 1))
  x_adv = jnp.where(expand(state.success), state.x_success, state.x_best)
  return Candidate(x_adv, state.success, state.loss_best)


def _run(objective, x, y, key, *, eps, norm, steps, rho, momentum, unroll) -> Candidate:
  """One APGD run (Algorithm 1) from a random start; `objective` as in `gradients`."""
  state = _advance(objective, x, y, key, fresh_state(x, jnp), -1, steps, eps=eps, norm=norm,
                   steps=steps, rho=rho, momentum=momentum,
                   unroll=loop_unroll(unroll, steps + 1))
  return _finish(state)


def segment_starts(steps: int) -> tuple:
  """Where a host-side runner cuts a run of `steps` iterations to drop the points already
  broken (`base.Stepped.starts`): −1 (the random start, `_advance`), then steps / 20,
  steps / 10 and the first two checkpoints w_1, w_2 (22 and 41 of 100), where most of the
  points that break do."""
  return (-1,) + tuple(sorted({w for w in (steps // 20, steps // 10, *checkpoints(steps)[:2])
                               if 0 < w < steps}))


def _check(norm, steps, restarts):
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  if steps < 1 or restarts < 1:
    raise ValueError(f"steps and restarts must be ≥ 1, got {steps} and {restarts}")


@reusable
def apgd(eps: float,
         norm: str = "linf",
         steps: int = 100,
         loss: Loss = cross_entropy,
         restarts: int = 1,
         eot_samples: int = 0,
         rho: float = 0.75,
         momentum: float = 0.75,
         unroll: Union[None, bool, int] = None) -> Attack:
  """Untargeted APGD: APGD-CE with the default loss, APGD-DLR with `objectives.dlr`.

  Args:
    eps: radius of the `norm` ball.
    norm: 'linf' or 'l2'.
    steps: N, iterations per run (100 in the paper).
    loss: maximised; `(logits, y) -> (B,)` or a `gradients.ImageLoss`.
    restarts: runs from independent random starts; the per-example worst case is kept.
    eot_samples: 0 for a deterministic `logits_fn(x)`; else `logits_fn(x, key)` and EOT
      averages over that many draws per iteration.
    rho: ρ of halving condition 1.
    momentum: α.
    unroll: `lax.fori_loop`'s `unroll`; None: `gradients.loop_unroll`.

  Returns:
    An `Attack`: `(logits_fn, x (B, H, W, C), y (B,), key) -> AttackResult`, with
    `min_classes`, the fewest classes its loss is defined for (3 for DLR).

  Raises (when the attack is traced, before anything is compiled):
    ClassCountError: the logits have fewer classes than the loss's `min_classes` (APGD-DLR
      needs K ≥ 3), naming the attack and both counts.
  """
  check_attack(eps, norm)
  _check(norm, steps, restarts)
  options = dict(eps=eps, norm=norm, steps=steps, rho=rho, momentum=momentum, unroll=unroll)
  required = min_classes(loss)
  if loss is dlr:
    name, reason = "apgd-dlr (APGD-DLR)", DLR_REASON
  else:
    name, reason = f"APGD on the loss {getattr(loss, '__name__', loss)!r}", ""

  def objective(logits_fn, x, y):
    require_classes(num_classes(logits_fn, x, eot_samples), required, name, reason,
                    FEW_CLASSES_FIX)
    return bind_objective(logits_fn, loss, y, eot_samples)

  def attack(logits_fn, x, y, key):
    bound = objective(logits_fn, x, y)
    worst = worst_of_runs(lambda _, k: _run(bound, x, y, k, **options), key, restarts)
    return AttackResult(worst.x_adv, worst.success)

  def advance(logits_fn, x, y, key, rank, restart, state, start, stop):
    del rank
    return _advance(objective(logits_fn, x, y), x, y, run_key(key, restarts, restart),
                    state, start, stop, **dict(options, unroll=1))

  attack.min_classes = required
  attack.stepped = Stepped(advance, fresh_state, _finish, steps, segment_starts(steps),
                           restarts)
  return attack


@reusable
def apgd_targeted(eps: float,
                  norm: str = "linf",
                  steps: int = 100,
                  n_target_classes: int = 9,
                  restarts: int = 1,
                  eot_samples: int = 0,
                  rho: float = 0.75,
                  momentum: float = 0.75,
                  unroll: Union[None, bool, int] = None) -> TargetedAttack:
  """APGD-T: APGD on the targeted DLR loss (eq. 7), once per target class.

  The targets are the classes ranked 2 … `n_target_classes` + 1 by the clean logits
  (capped at K − 1); every target gets `restarts` runs and the per-example worst case over
  all of them is kept. A success is any misclassification.
  `single_target(logits_fn, x, y, key, rank)` runs the `restarts` runs against the class
  ranked `rank` + 1 only (what AutoAttack calls, target by target, on the points still
  robust, as the reference implementation does); a rank outside 1 … K − 1 attacks nothing
  (x_adv = x, success False). Other arguments as for `apgd`.

  Raises (when traced, before anything is compiled):
    ClassCountError: the logits have fewer than 4 classes (the targeted DLR loss reads the
      4th largest logit), naming apgd-t and the count.
  """
  check_attack(eps, norm)
  _check(norm, steps, restarts)
  options = dict(eps=eps, norm=norm, steps=steps, rho=rho, momentum=momentum, unroll=unroll)

  def targeted_objective(logits_fn, y, target):
    return bind_objective(logits_fn, lambda z, labels: dlr_targeted(z, labels, target), y,
                          eot_samples)

  def ranking(logits_fn, x, y, key):
    """(K, the classes ranked by the clean logits (B, K), most likely first, the key of the
    runs): what every run against one target starts from."""
    classes = num_classes(logits_fn, x, eot_samples)
    require_classes(classes, dlr_targeted.min_classes, "apgd-t (APGD-T)",
                    DLR_TARGETED_REASON, FEW_CLASSES_FIX)
    key_clean, key_runs = jax.random.split(key)
    _, logits = bind_objective(logits_fn, cross_entropy, y, eot_samples)(x, key_clean)
    return classes, jnp.argsort(logits, axis=-1)[:, ::-1], key_runs

  def runs(logits_fn, x, y, key, first_rank, n_ranks) -> Candidate:
    """The worst case over `restarts` runs for each of `n_ranks` targets from `first_rank`."""
    classes, ranked, key = ranking(logits_fn, x, y, key)
    n_ranks = min(n_ranks, classes - 1)

    def run(r, key):
      rank = first_rank + r // restarts  # ≤ K − 1 when called through `all_targets`.
      target = ranked[:, jnp.minimum(rank, classes - 1)]
      found = _run(targeted_objective(logits_fn, y, target), x, y, key, **options)
      return found._replace(success=found.success & (rank <= classes - 1))

    return worst_of_runs(run, key, n_ranks * restarts)

  def all_targets(logits_fn, x, y, key):
    worst = runs(logits_fn, x, y, key, 1, n_target_classes)
    return AttackResult(worst.x_adv, worst.success)

  def single_target(logits_fn, x, y, key, rank):
    worst = runs(logits_fn, x, y, key, rank, 1)
    in_range = (rank >= 1) & (rank <= num_classes(logits_fn, x, eot_samples) - 1)
    x_adv = jnp.where(in_range, worst.x_adv, x)
    return AttackResult(x_adv, worst.success & in_range)

  def advance(logits_fn, x, y, key, rank, restart, state, start, stop):
    """`single_target`'s run `restart` against the class ranked `rank` (1 … K − 1); a run
    begun (start = −1) ranks the classes by the clean logits, later segments read the
    target from `state`."""

    def ranked_target():
      classes, ranked, _ = ranking(logits_fn, x, y, key)
      return ranked[:, jnp.minimum(rank, classes - 1)].astype(state.target.dtype)

    target = jax.lax.cond(start < 0, ranked_target, lambda: state.target)
    key_run = run_key(jax.random.split(key)[1], restarts, restart)  # As in `ranking`.
    return _advance(targeted_objective(logits_fn, y, target), x, y, key_run,
                    state._replace(target=target), start, stop, **dict(options, unroll=1))

  return TargetedAttack(all_targets, single_target, n_target_classes,
                        min_classes=dlr_targeted.min_classes,
                        stepped=Stepped(advance, fresh_state, _finish, steps,
                                        segment_starts(steps), restarts))
