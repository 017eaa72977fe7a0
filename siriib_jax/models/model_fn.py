"""The model as a function of the image: the one wrapper that training's inner attack,
validation and evaluation hand to attacks (`logits_fn`) and to the adaptive attacks and
studies (`outputs_fn`)."""

import dataclasses
import functools

import flax.linen as nn
import jax

BATCH_NORM_MODES = ("eval", "train")


def _logits(output) -> jax.Array:
  return getattr(output, "logits", output)


@dataclasses.dataclass(frozen=True)
class ModelFn:
  """`(variables, x (B, H, W, C) in [0, 1]) -> logits (B, K) float32`, or the model's whole
  output with `outputs=True`.

  Hashable (by the module), so that `jax.tree_util.Partial(ModelFn(model), variables)` is a
  jit argument with the variables as traced leaves.

  Attributes:
    model: a Flax module with `apply(variables, x, train=...)` returning logits or a
      `ModelOutput`.
    outputs: return the whole output instead of the logits.
    batch_norm: "eval" normalises with the running statistics; "train" with the batch's
      own (as training's inner attack may); the running statistics are never updated.
  """
  model: nn.Module
  outputs: bool = False
  batch_norm: str = "eval"

  def __call__(self, variables, x):
    return _traced_once(self, variables, x)

  def apply(self, variables, x):
    """The model on x, traced anew (what `__call__` traces once per input shape)."""
    if self.batch_norm == "train":
      output = self.model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
    else:
      output = self.model.apply(variables, x, train=False)
    return output if self.outputs else _logits(output).astype("float32")


@functools.partial(jax.jit, static_argnums=0)
def _traced_once(model_fn: ModelFn, variables, x):
  """`model_fn.apply` under `jit`: JAX traces the Flax model once per `ModelFn`, variables'
  structure and input shape, and every program that calls it (an attack's segments and
  result, its gradient, the clean pass) reuses that trace instead of running Flax's Python
  again (BENCHMARKS.md §2k)."""
  return model_fn.apply(variables, x)


def logits_fn(model: nn.Module, variables, batch_norm: str = "eval") -> jax.tree_util.Partial:
  """`x (B, H, W, C) -> logits (B, K)` with `variables` as pytree leaves (a jit argument
  that does not recompile per parameters); `batch_norm` as in `ModelFn`.

  Raises:
    ValueError: `batch_norm` is not one of `BATCH_NORM_MODES`.
  """
  if batch_norm not in BATCH_NORM_MODES:
    raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}")
  return jax.tree_util.Partial(ModelFn(model, batch_norm=batch_norm), variables)


def outputs_fn(model: nn.Module, variables) -> jax.tree_util.Partial:
  """`x -> ModelOutput` (logits, x_avg, features), as `logits_fn` with running statistics."""
  return jax.tree_util.Partial(ModelFn(model, outputs=True), variables)
