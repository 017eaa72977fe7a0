"""Parameters and multiply-accumulates of a model, counted as ptflops counts them.

Parameters are the trainable leaves (BatchNorm scale and bias included, running
statistics not). MACs are those of every `nn.Conv` and `nn.Dense` call for one image —
the convolutions and dense layers the paper's Table 3 counts; a `PooledConv` counts as the
full-resolution convolution it replaces — found by intercepting the
module calls during an abstract forward pass (nothing is computed). FFT, resizing,
pooling, normalisation and activations are not counted (SPEC §6).
"""

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from siriib_jax.models import create_model
from siriib_jax.runs import display_name
from siriib_jax.models.siriib import PooledConv


class Complexity(NamedTuple):
  params: int
  macs: int


def count_complexity(model: nn.Module, image_size: int, channels: int = 3) -> Complexity:
  """Counts `model`'s parameters and its conv + dense MACs on one (image_size²) image."""
  macs = 0

  def count_macs(next_fun, args, kwargs, context):
    nonlocal macs
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__":
      return out
    if isinstance(module, PooledConv):
      macs += module.paper_macs(out.shape)
    elif isinstance(module, (nn.Conv, nn.Dense)):
      kernel = module.variables["params"]["kernel"]
      # Each output element needs (kernel size × input features per group) MACs.
      per_output = math.prod(kernel.shape[:-1])
      macs += math.prod(out.shape) * per_output
    return out

  x = jnp.zeros((1, image_size, image_size, channels), jnp.float32)

  def init_and_apply():
    variables = model.init(jax.random.key(0), x)
    with nn.intercept_methods(count_macs):
      model.apply(variables, x)
    return variables

  variables = jax.eval_shape(init_and_apply)
  params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))
  return Complexity(params, macs)


def describe(config: ml_collections.ConfigDict) -> str:
  """One line: the model of `config` with its parameters (M) and MACs (G)."""
  model = create_model(config.model, config.dataset.image_size)
  counts = count_complexity(model, config.dataset.image_size)
  name = display_name(config.model, "complexity")
  return (f"{name:<24} {counts.params / 1e6:8.2f} M params  {counts.macs / 1e9:6.2f} G MACs "
          f"({counts.params:,} params, {counts.macs:,} MACs, {config.dataset.image_size}² input)")


# The rows of the paper's Tables 3 and 5 (SPEC §6): backbone and SiRIIB variant (None: off).
PAPER_ROWS = (("resnet18", None), ("resnet18", "base"), ("wrn28_10", None),
              ("wrn28_10", "base"), ("wrn28_10", "L"), ("wrn28_10", "XL"))


def paper_table() -> str:
  """The lines of `describe` for every row of Tables 3 and 5 (CIFAR, 10 classes, 32²), from
  the default config (`configs/default.py`, shipped as `siriib_jax.configs`)."""
  from siriib_jax.configs import default as default_config  # pylint: disable=import-outside-toplevel
  lines = []
  for name, variant in PAPER_ROWS:
    config = default_config.get_config()
    config.model.name = name
    config.model.siriib.enabled = variant is not None
    config.model.siriib.variant = variant or "base"
    lines.append(describe(config))
  return "\n".join(lines)


if __name__ == "__main__":
  print(paper_table())
