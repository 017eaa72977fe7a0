"""Layer defaults shared by every model in the package.

Convolutions use He-normal (fan-out) initialisation as torchvision's ResNet does; batch
normalisation uses PyTorch's defaults (momentum 0.1, i.e. flax momentum 0.9; eps 1e-5), so
that running statistics evolve as in the PyTorch code the paper was trained with, and its
two-pass variance E[(x − E[x])²] (see `batch_norm`). Every
convolution computes its kernel gradient with matrix products (`conv.py`; faster on CPU).
"""

import functools

import flax.linen as nn

from siriib_jax.models.conv import conv_general_dilated

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# Any convolution of the models: `flax.linen.Conv` with the matmul kernel gradient.
ConvWithBias = functools.partial(nn.Conv, kernel_init=conv_init,
                                 conv_general_dilated=conv_general_dilated)
Conv = functools.partial(ConvWithBias, use_bias=False)
Conv3x3 = functools.partial(Conv, kernel_size=(3, 3), padding=((1, 1), (1, 1)))
Conv1x1 = functools.partial(Conv, kernel_size=(1, 1), padding="VALID")


def batch_norm(train: bool, dtype, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's momentum and epsilon; batch statistics when `train`.

  The batch variance is the two-pass E[(x − E[x])²], not Flax's default one-pass
  E[x²] − E[x]² (`use_fast_variance`): with the batch split over devices or hosts (the
  global mean of jit's data parallelism, `parallel.py`) the one-pass form gave ResNet-18-SR
  a train-mode input gradient 2 % off the single-device one (from the SR blocks' `fuse_bn`;
  1 device and the two-pass form on 2 agreed to 1e-5; 2 processes agree to 1e-6), which
  flipped pixels of the inner attack's x_adv (tests/test_batch_norm_sharding.py).
  """
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name,
      use_fast_variance=False)
