"""CIFAR ResNet-18 and PreAct-ResNet-18 (He et al. 2016a, 2016b).

The CIFAR variant: a 3×3 stride-1 stem without max-pool, four stages of two basic blocks
(64, 128, 256, 512 channels, times `width_multiplier`; strides 1, 2, 2, 2), global
average pooling and a dense head.
With 10 classes ResNet-18 has 11,173,962 parameters and 0.56 G MACs at 32×32 (Table 3).
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from siriib_jax.models.skip_targets import SkipTarget, add_skip, scaled_widths
from siriib_jax.models.layers import Conv1x1, Conv3x3, batch_norm

STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


class BasicBlock(nn.Module):
  """Post-activation basic block: conv-BN-ReLU-conv-BN, plus a projected shortcut."""
  channels: int
  stride: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    s = (self.stride, self.stride)
    y = Conv3x3(self.channels, strides=s, dtype=self.dtype)(x)
    y = nn.relu(batch_norm(train, self.dtype)(y))
    y = Conv3x3(self.channels, dtype=self.dtype)(y)
    y = batch_norm(train, self.dtype)(y)
    if self.stride != 1 or x.shape[-1] != self.channels:
      x = Conv1x1(self.channels, strides=s, dtype=self.dtype, name="shortcut_conv")(x)
      x = batch_norm(train, self.dtype, name="shortcut_bn")(x)
    return nn.relu(x + y)


class PreActBlock(nn.Module):
  """Pre-activation basic block: BN-ReLU-conv-BN-ReLU-conv; the shortcut projects the
  pre-activated input when the shape changes."""
  channels: int
  stride: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    s = (self.stride, self.stride)
    a = nn.relu(batch_norm(train, self.dtype)(x))
    if self.stride != 1 or x.shape[-1] != self.channels:
      x = Conv1x1(self.channels, strides=s, dtype=self.dtype, name="shortcut_conv")(a)
    y = Conv3x3(self.channels, strides=s, dtype=self.dtype)(a)
    y = nn.relu(batch_norm(train, self.dtype)(y))
    y = Conv3x3(self.channels, dtype=self.dtype)(y)
    return x + y


class ResNet18(nn.Module):
  """CIFAR ResNet-18; `preact=True` gives PreAct-ResNet-18.

  Input: normalised images (B, H, W, 3). Output: logits (B, num_classes).
  Skip targets (SPEC §2): the stem conv output (64 channels, stride 1; added before the
  stem's BN in ResNet-18), stage 1 (64, 1) and stage 2 (128, 2).
  """
  num_classes: int = 10
  preact: bool = False
  width_multiplier: float = 1.0
  dtype: jnp.dtype = jnp.float32

  @property
  def widths(self) -> tuple[int, ...]:
    return scaled_widths(STAGE_WIDTHS, self.width_multiplier)

  @property
  def skip_targets(self) -> tuple[SkipTarget, ...]:
    w = self.widths
    return (SkipTarget(w[0], 1), SkipTarget(w[0], STAGE_STRIDES[0]),
            SkipTarget(w[1], STAGE_STRIDES[0] * STAGE_STRIDES[1]))

  @nn.compact
  def __call__(self, x, skips: Sequence[jnp.ndarray] = (), train: bool = False):
    block = PreActBlock if self.preact else BasicBlock
    x = Conv3x3(self.widths[0], dtype=self.dtype, name="stem_conv")(x.astype(self.dtype))
    x = add_skip(x, skips, 0)
    if not self.preact:
      x = nn.relu(batch_norm(train, self.dtype, name="stem_bn")(x))
    for stage, (width, stride) in enumerate(zip(self.widths, STAGE_STRIDES)):
      for i in range(2):
        x = block(width, stride if i == 0 else 1, self.dtype, name=f"stage{stage + 1}_block{i}")(
            x, train)
      if stage < 2:
        x = add_skip(x, skips, stage + 1)
    if self.preact:
      x = nn.relu(batch_norm(train, self.dtype, name="final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
