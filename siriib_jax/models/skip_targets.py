"""The contract between a classifier backbone and SiRIIB's skip connections.

A backbone maps normalised images (B, H, W, 3) to logits (B, num_classes). It names three
*skip targets* — the stem convolution's output, the output of stage 1 and the output of
stage 2 (SPEC §2) — and adds `skips[i]` to target `i` for every `i < len(skips)`.
"""

from typing import NamedTuple, Sequence

import jax.numpy as jnp


class SkipTarget(NamedTuple):
  """Where an IB skip connection `f_i` is added (paper §4.2).

  Attributes:
    channels: channels of the backbone feature at this target.
    stride: its spatial downsampling relative to the input (the feature is H/stride wide).
  """
  channels: int
  stride: int


def scaled_widths(widths: Sequence[int], multiplier: float) -> tuple[int, ...]:
  """Channel counts times a width multiplier, rounded, at least 1 each."""
  return tuple(max(1, round(w * multiplier)) for w in widths)


def add_skip(x: jnp.ndarray, skips: Sequence[jnp.ndarray], index: int) -> jnp.ndarray:
  """`x + skips[index]` (in `x`'s dtype) when that skip exists, else `x`."""
  return x + skips[index].astype(x.dtype) if index < len(skips) else x
