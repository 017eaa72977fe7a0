"""FGSM and PGD under L∞ and L2.

PGD (Madry et al. 2018, eq. 2): from a random point of the ε-ball (or from x),
`x ← Π(x + α · s(∇ₓ L))` for `steps` iterations, with `s` the sign (L∞) or the
L2-normalised gradient (L2) and Π the projection onto the ε-ball ∩ [0, 1]. FGSM
(Goodfellow et al. 2015) is one such step of size ε; FGSM-AT (Wong et al. 2020, "Fast is
better than free", Alg. 3) takes it from a random start with α = 1.25 ε.

Which iterate is returned (`keep`): for evaluation ('first_success', the default) the
first iterate x⁽⁰⁾ … x⁽ˢᵗᵉᵖˢ⁾ that the model misclassifies, else the last one — a point is
broken when any iterate was adversarial, as APGD keeps its first successful iterate (Croce
& Hein 2020, Alg. 1); the last iterate alone can be classified correctly again after an
earlier one was not, and then more steps could score higher. For adversarial training
('last') the final iterate, Madry et al.'s inner maximisation. Non-finite gradient entries
are 0 (`gradients.finite_gradient`); success needs finite logits (`base.misclassified`).

The loss is a logit loss `(logits, y) -> (B,)` or a `gradients.ImageLoss` on the images
too (adaptive attacks); see `siriib_jax.attacks.gradients`. Both factories return a pure
`Attack`, safe to call inside `jit` (e.g. in the inner loop of adversarial training).
"""

from typing import Optional, Union

import jax
import jax.numpy as jnp

from siriib_jax.attacks.base import Attack, AttackResult, misclassified, reusable
from siriib_jax.attacks.gradients import (Candidate, Loss, bind_objective, loop_unroll,
                                          random_start as sample_start,
                                          value_logits_and_grad, worst_of_runs)
from siriib_jax.attacks.objectives import cross_entropy
from siriib_jax.attacks.projections import NORMS, normalized_step, project
from siriib_jax.attacks.threat_model import check_attack

# `pgd`'s `keep`: which iterate it returns.
KEEP = ("first_success", "last")


@reusable
def pgd(eps: float,
        step_size: float,
        steps: int,
        norm: str = "linf",
        loss: Loss = cross_entropy,
        random_start: bool = True,
        restarts: int = 1,
        start_noise: float = 0.0,
        unroll: Union[None, bool, int] = None,
        keep: str = "first_success") -> Attack:
  """Projected gradient ascent on `loss` in the `norm` ε-ball ∩ [0, 1].

  Args:
    eps: radius of the ball (in [0, 1] pixel units).
    step_size: α, the step length in `norm`.
    steps: number of gradient steps.
    norm: 'linf' or 'l2'.
    loss: maximised; `(logits, y) -> (B,)` or an `ImageLoss`.
    random_start: start from a uniform point of the ball (else from x).
    start_noise: if > 0, start instead from `x + start_noise · N(0, I)`, projected — TRADES'
      start (0.001; Zhang et al. 2019, Alg. 1), where the KL loss has zero gradient at x.
    restarts: independent runs; per example the worst case is kept: a success in any run
      counts, and among failures the point of highest loss.
    unroll: `lax.fori_loop`'s `unroll` for the step loop; None: `gradients.loop_unroll`.
    keep: 'first_success' (evaluation): return, per example, the first misclassified
      iterate (the start included), else the last; 'last' (adversarial training's inner
      maximisation, Madry et al. 2018): the last iterate.

  Returns:
    An `Attack`: `(logits_fn, x (B, H, W, C), y (B,), key) -> AttackResult`, success being
    `base.misclassified` (finite logits, `argmax ≠ y`) at the returned point.

  Raises:
    ValueError: an unknown `norm` or `keep`, or `steps`/`restarts` < 1.
  """
  check_attack(eps, norm, step_size)
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  if keep not in KEEP:
    raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
  if steps < 1 or restarts < 1:
    raise ValueError(f"steps and restarts must be ≥ 1, got {steps} and {restarts}")

  def attack(logits_fn, x, y, key):
    objective = bind_objective(logits_fn, loss, y)
    expand = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))

    def run(_, key):
      def step(_, x_adv):
        _, _, grad = value_logits_and_grad(objective, x_adv, None)
        return project(x_adv + step_size * normalized_step(grad, norm), x, eps, norm)

      def step_keeping(_, carry):
        # The forward pass of the step tests its own iterate: no extra pass.
        x_adv, x_found, found = carry
        _, logits, grad = value_logits_and_grad(objective, x_adv, None)
        newly = misclassified(logits, y) & ~found
        x_found = jnp.where(expand(newly), x_adv, x_found)
        x_next = project(x_adv + step_size * normalized_step(grad, norm), x, eps, norm)
        return x_next, x_found, found | newly

      if start_noise > 0:
        x_adv = project(x + start_noise * jax.random.normal(key, x.shape, x.dtype), x, eps, norm)
      else:
        x_adv = sample_start(key, x, eps, norm) if random_start else x
      if keep == "last":
        x_adv = jax.lax.fori_loop(0, steps, step, x_adv, unroll=loop_unroll(unroll, steps))
        value, logits = objective(x_adv, None)
        return Candidate(x_adv, misclassified(logits, y), value)
      x_adv, x_found, found = jax.lax.fori_loop(
          0, steps, step_keeping, (x_adv, x_adv, jnp.zeros(y.shape, bool)),
          unroll=loop_unroll(unroll, steps))
      value, logits = objective(x_adv, None)
      success = found | misclassified(logits, y)
      return Candidate(jnp.where(expand(found), x_found, x_adv), success, value)

    worst = worst_of_runs(run, key, restarts)
    return AttackResult(worst.x_adv, worst.success)

  return attack


def fgsm(eps: float,
         norm: str = "linf",
         step_size: Optional[float] = None,
         random_start: bool = False,
         loss: Loss = cross_entropy,
         keep: str = "first_success") -> Attack:
  """One signed (L∞) or normalised (L2) gradient step, projected: PGD with `steps=1`.

  Args:
    eps: radius of the ball.
    norm: 'linf' or 'l2'.
    step_size: defaults to `eps`; FGSM-AT uses `1.25 * eps` with `random_start=True`.
    random_start: step from a uniform point of the ball rather than from x.
    loss: as for `pgd`.
    keep: as for `pgd`: 'first_success' returns the start where the model already
      misclassifies it; 'last' (FGSM-AT) always the stepped point.
  """
  check_attack(eps, norm, step_size)
  return pgd(eps, eps if step_size is None else step_size, steps=1, norm=norm, loss=loss,
             random_start=random_start, keep=keep)
