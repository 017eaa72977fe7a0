"""WideResNet-depth-width (Zagoruyko & Komodakis 2016), CIFAR layout.

A 3×3 stem to 16 channels, three stages of (depth − 4) / 6 pre-activation basic blocks of
16k, 32k and 64k channels (times `width_multiplier`; strides 1, 2, 2), BN-ReLU, global
average pooling and a dense head. WRN-28-10 has 36,479,194 parameters and 5.25 G MACs at 32×32 with 10 classes.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from siriib_jax.models.skip_targets import SkipTarget, add_skip, scaled_widths
from siriib_jax.models.layers import Conv3x3, batch_norm
from siriib_jax.models.resnet import PreActBlock


class WideResNet(nn.Module):
  """Input: normalised images (B, H, W, 3). Output: logits (B, num_classes).

  Skip targets (SPEC §2): the stem conv output (16, stride 1), stage 1 (16k, 1) and
  stage 2 (32k, 2).
  """
  depth: int = 28
  widen_factor: int = 10
  num_classes: int = 10
  width_multiplier: float = 1.0
  dtype: jnp.dtype = jnp.float32

  @property
  def widths(self) -> tuple[int, int, int]:
    return scaled_widths((16, 32, 64), self.widen_factor * self.width_multiplier)

  @property
  def skip_targets(self) -> tuple[SkipTarget, ...]:
    return (SkipTarget(16, 1), SkipTarget(self.widths[0], 1), SkipTarget(self.widths[1], 2))

  @nn.compact
  def __call__(self, x, skips: Sequence[jnp.ndarray] = (), train: bool = False):
    blocks_per_stage = (self.depth - 4) // 6
    x = Conv3x3(16, dtype=self.dtype, name="stem_conv")(x.astype(self.dtype))
    x = add_skip(x, skips, 0)
    for stage, (width, stride) in enumerate(zip(self.widths, (1, 2, 2))):
      for i in range(blocks_per_stage):
        x = PreActBlock(width, stride if i == 0 else 1, self.dtype,
                        name=f"stage{stage + 1}_block{i}")(x, train)
      if stage < 2:
        x = add_skip(x, skips, stage + 1)
    x = nn.relu(batch_norm(train, self.dtype, name="final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)
