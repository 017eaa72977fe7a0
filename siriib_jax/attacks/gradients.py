"""What the gradient attacks (PGD, APGD) share: the objective they maximise, its gradient,
the random start, the per-example worst case over runs, and the form of the step loop.

Every gradient attack maximises `objective(x_adv, key) -> (loss (B,), logits (B, K))`,
built by `bind_objective` from the attack's `logits_fn` and a loss:

* a logit loss `(logits, y) -> (B,)` (`objectives.cross_entropy`, `cw_margin`, `dlr`, …);
* an `ImageLoss`, `fn(x_adv, logits, y) -> (B,)`, for adaptive attacks on model internals
  (e.g. SiRIIB's `x_avg`): `fn` closes over the model and its parameters and may run the
  model again on `x_adv`.

The logits come back with the loss so that success (`argmax ≠ y`) costs no extra forward
pass.
"""

from typing import Callable, NamedTuple, Union

import jax
import jax.numpy as jnp

from siriib_jax.attacks.projections import per_example_norm, project


class ImageLoss(NamedTuple):
  """A loss that also sees the attacked images: `fn(x_adv, logits, y) -> (B,)`, maximised.

  `x_adv` is (B, H, W, C). If `fn` runs the model on `x_adv` again, XLA's common
  subexpression elimination usually merges that pass with the attack's own under `jit`.
  """
  fn: Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]


# `(logits, y) -> (B,)`, or an `ImageLoss`.
Loss = Union[Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray], ImageLoss]


def bind_objective(logits_fn: Callable, loss: Loss, y: jnp.ndarray, eot_samples: int = 0):
  """Builds `objective(x_adv, key) -> (loss (B,), logits (B, K))`.

  Args:
    logits_fn: `x (B, H, W, C) -> logits (B, K)`; with `eot_samples > 0` a stochastic model
      `(x, key) -> logits`.
    loss: a logit loss or an `ImageLoss`.
    y: (B,) int labels.
    eot_samples: 0 for a deterministic model (`key` is then unused). Otherwise Expectation
      over Transformation (Athalye et al. 2018, §4): loss and logits (and so the gradient)
      are averaged over that many draws of the model's randomness, drawn from `key`.
  """
  def value(x_adv, logits):
    if isinstance(loss, ImageLoss):
      return loss.fn(x_adv, logits, y)
    return loss(logits, y)

  if not eot_samples:
    def objective(x_adv, key):
      del key
      logits = logits_fn(x_adv).astype(jnp.float32)
      return value(x_adv, logits), logits
    return objective

  def eot_objective(x_adv, key):
    def draw(key):
      logits = logits_fn(x_adv, key).astype(jnp.float32)
      return value(x_adv, logits), logits
    # `lax.map`, a loop, rather than `vmap`: memory stays that of one forward pass.
    values, logits = jax.lax.map(draw, jax.random.split(key, eot_samples))
    return jnp.mean(values, axis=0), jnp.mean(logits, axis=0)
  return eot_objective


def num_classes(logits_fn: Callable, x: jnp.ndarray, eot_samples: int = 0) -> int:
  """K, the last dimension of `logits_fn`'s logits on x (B, H, W, C), from the static output
  shape: `logits_fn` is traced abstractly (`jax.eval_shape`), never compiled or run. With
  `eot_samples > 0` the model is stochastic, `logits_fn(x, key)`."""
  args = (x, jax.random.key(0)) if eot_samples else (x,)
  return int(jax.eval_shape(logits_fn, *args).shape[-1])


def finite_gradient(grad: jnp.ndarray) -> jnp.ndarray:
  """`grad` (B, ...) with every NaN or ±inf entry replaced by 0.

  A model can have finite logits and a non-finite input gradient (a `jnp.where` or `sqrt`
  branch whose value is 0 but whose derivative is not finite). Every gradient step of the
  attacks (PGD, FGSM, C&W, APGD, APGD-T, FAB-T, the adaptive attacks, training's inner
  attack) reads the gradient through this function, so a non-finite entry moves its pixel
  by 0 instead of turning x_adv into NaN (and, under L2, the whole image through the
  normalisation); the other entries still give the step's direction.
  `evaluation.robustness` counts the points whose gradient at the clean image has such
  entries (`meta.nonfinite_gradient_points`).
  """
  return jnp.where(jnp.isfinite(grad), grad, jnp.zeros_like(grad))


def nonfinite_gradient(grad: jnp.ndarray) -> jnp.ndarray:
  """(B,) bool: the point's gradient `grad` (B, ...) has a NaN or ±inf entry."""
  return ~jnp.all(jnp.isfinite(grad.reshape(grad.shape[0], -1)), axis=1)


def value_logits_and_grad(objective, x_adv: jnp.ndarray, key: jax.Array):
  """`(loss (B,), logits (B, K), ∇ₓ Σ loss (B, H, W, C))` from one forward and backward;
  non-finite gradient entries are 0 (`finite_gradient`)."""
  (value, logits), vjp = jax.vjp(lambda x: objective(x, key), x_adv)
  grad, = vjp((jnp.ones_like(value), jnp.zeros_like(logits)))
  return value, logits, finite_gradient(grad)


def random_start(key: jax.Array, x: jnp.ndarray, eps: float, norm: str) -> jnp.ndarray:
  """A uniform point of the ε-ball around x (L∞: per pixel; L2: uniform in the ball),
  clipped to [0, 1]. (B, H, W, C)."""
  if norm == "linf":
    return project(x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps), x, eps, norm)
  key_direction, key_radius = jax.random.split(key)
  direction = jax.random.normal(key_direction, x.shape, x.dtype)
  per_example = (x.shape[0],) + (1,) * (x.ndim - 1)
  direction /= per_example_norm(direction, norm).reshape(per_example) + 1e-12
  radius = eps * jax.random.uniform(key_radius, per_example, x.dtype) ** (1.0 / x[0].size)
  return project(x + radius * direction, x, eps, norm)


class Candidate(NamedTuple):
  """One run's per-example result: x_adv (B, H, W, C), success (B,) bool, loss (B,)."""
  x_adv: jnp.ndarray
  success: jnp.ndarray
  loss: jnp.ndarray


def worst_case(a: Candidate, b: Candidate) -> Candidate:
  """Per example, the worse of two runs for the defender: a success beats a failure;
  between two successes `a` is kept; between two failures the higher loss."""
  take_b = jnp.where(a.success, False, b.success | (b.loss > a.loss))
  pick = lambda u, v: jnp.where(take_b.reshape((-1,) + (1,) * (u.ndim - 1)), v, u)
  return jax.tree_util.tree_map(pick, a, b)


def run_key(key: jax.Array, runs: int, r) -> jax.Array:
  """The key of run r of `runs` drawn from `key` (as `worst_of_runs` gives it)."""
  return jax.random.split(key, runs)[r]


def worst_of_runs(run: Callable[[jnp.ndarray, jax.Array], Candidate], key: jax.Array,
                  runs: int) -> Candidate:
  """`worst_case` over `run(r, run_key(key, runs, r))` for r = 0 … runs − 1 (r traced), in a
  rolled loop so the program holds one copy of `run`."""
  worst = run(jnp.asarray(0), run_key(key, runs, 0))
  if runs > 1:
    worst = jax.lax.fori_loop(
        1, runs, lambda r, w: worst_case(w, run(r, run_key(key, runs, r))), worst)
  return worst


# Loops of at most this many steps are unrolled by default (`unroll=None`).
MAX_AUTO_UNROLL = 20


def loop_unroll(unroll: Union[None, bool, int], steps: int) -> Union[bool, int]:
  """The `unroll` argument for `lax.fori_loop` over an attack's `steps`.

  On XLA's CPU backend a convolution inside a rolled loop runs several times slower than
  unrolled (jax-ml/jax#12868), but unrolling long loops costs compile time (measurements:
  BENCHMARKS.md §4). Hence `None` (the default) unrolls fully up to `MAX_AUTO_UNROLL` steps (the inner loop of
  adversarial training) and keeps longer loops rolled (evaluation). On GPU/TPU the choice
  matters little. An explicit bool or int is passed through.
  """
  if unroll is None:
    return steps <= MAX_AUTO_UNROLL
  return unroll
