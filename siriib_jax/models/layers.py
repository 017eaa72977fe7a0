"""Layer defaults shared by every model in the package.

Convolutions use He-normal (fan-out) initialisation as torchvision's ResNet does; batch
normalisation uses PyTorch's defaults (momentum 0.1, i.e. flax momentum 0.9; eps 1e-5), so
that running statistics evolve as in the PyTorch code the paper was trained with.
"""

import functools

import flax.linen as nn

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

Conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init)
Conv3x3 = functools.partial(Conv, kernel_size=(3, 3), padding=((1, 1), (1, 1)))
Conv1x1 = functools.partial(Conv, kernel_size=(1, 1), padding="VALID")


def batch_norm(train: bool, dtype, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's momentum and epsilon; batch statistics when `train`."""
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)
