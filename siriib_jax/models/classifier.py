"""The classifier: a backbone with optional SiRIIB and normalisation inside, and
`create_model`, the factory that checks the `model` block and builds it."""

from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from siriib_jax.config_errors import ConfigError, check_choice, fail
from siriib_jax.models.backbones import BACKBONES
from siriib_jax.models.siriib import EXTRACTOR_VARIANTS, ORTHOGONALITY_MODES, SiRIIB


@flax.struct.dataclass
class ModelOutput:
  """What the model returns.

  Attributes:
    logits: (B, num_classes) float32.
    x_avg: (B, H, W, 3) in (0, 1), SiRIIB's sigmoid-averaged SR output; None without SiRIIB.
    features: the IB skip features `f_i` added to the backbone, () without SiRIIB.
  """
  logits: jnp.ndarray
  x_avg: Optional[jnp.ndarray] = None
  features: tuple = ()


class Classifier(nn.Module):
  """Images in [0, 1] (B, H, W, 3) → `ModelOutput`.

  SiRIIB sees the raw image; the backbone sees `(x − mean) / std`, with the `f_i` added to
  its skip targets. Parameters: `{'backbone': …, 'siriib': …}`, the backbone's tree being
  the same as without SiRIIB.
  """
  backbone: nn.Module
  siriib: Optional[SiRIIB] = None
  mean: Sequence[float] = (0.4914, 0.4822, 0.4465)
  std: Sequence[float] = (0.2471, 0.2435, 0.2616)

  def __call__(self, x: jnp.ndarray, train: bool = False) -> ModelOutput:
    x = x.astype(jnp.float32)
    x_avg, features = None, ()
    if self.siriib is not None:
      x_avg, features = self.siriib(x, self.backbone.skip_targets, train)
    normalised = (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)
    logits = self.backbone(normalised, skips=features, train=train)
    return ModelOutput(logits, x_avg, features)


def _validate_model_config(config: ml_collections.ConfigDict, image_size: int) -> None:
  """`create_model`'s check of the `model` block; raises `ConfigError`."""
  BACKBONES.lookup(config.name)
  if not isinstance(config.num_classes, int) or config.num_classes < 2:
    fail("model.num_classes", config.num_classes, "it must be an integer ≥ 2")
  if not config.width_multiplier > 0:
    fail("model.width_multiplier", config.width_multiplier,
         "it must be > 0 (1 is the paper's width)")
  for key in ("mean", "std"):
    value = tuple(config[key])
    if len(value) != 3:
      fail(f"model.{key}", value, "it must hold 3 values, one per RGB channel")
  if min(config.std) <= 0:
    fail("model.std", tuple(config.std), "every value must be > 0")
  s = config.siriib
  if not s.enabled:
    return
  if not 1 <= s.num_skips <= 3:
    fail("model.siriib.num_skips", s.num_skips, "it must be 1, 2 or 3 (the paper finds 4 or "
         "more do not converge, §5.2)")
  check_choice("model.siriib.variant", s.variant, EXTRACTOR_VARIANTS)
  check_choice("model.siriib.orthogonality", s.orthogonality, ORTHOGONALITY_MODES)
  scales = tuple(s.scales)
  if not scales or any(not isinstance(v, int) or not 1 <= v <= image_size for v in scales):
    fail("model.siriib.scales", scales,
         f"each scale must be an integer in [1, {image_size}] (the image size)")
  if not isinstance(s.orth_channels, int) or s.orth_channels < 3:
    fail("model.siriib.orth_channels", s.orth_channels,
         "it must be an integer ≥ 3, so that the 3 × orth_channels kernel can have "
         "orthonormal rows")


def create_model(config: ml_collections.ConfigDict, image_size: int,
                 dtype: Any = jnp.float32) -> Classifier:
  """Checks `config` (the `model` block) for images of `image_size`² and builds the
  classifier it names, before anything is compiled.

  Args:
    config: `config.model` (keys documented in `configs/default.py`).
    image_size: height = width of the input images.
    dtype: the backbone's compute dtype (parameters stay float32). The SiRIIB branch
      computes in float32 whatever `dtype` (in bf16 its losses diverged; BENCHMARKS.md §3c).

  Raises:
    ConfigError naming the first bad key, its value and the allowed values.
  """
  _validate_model_config(config, image_size)
  backbone = BACKBONES[config.name](num_classes=config.num_classes,
                                    width_multiplier=config.width_multiplier, dtype=dtype)
  siriib = None
  if config.siriib.enabled:
    for target in backbone.skip_targets:
      if image_size % target.stride:
        raise ConfigError(f"image size {image_size} is not divisible by the stride "
                          f"{target.stride} of a SiRIIB skip target of {config.name}")
    s = config.siriib
    siriib = SiRIIB(scales=tuple(s.scales), num_skips=s.num_skips, variant=s.variant,
                    orth_channels=s.orth_channels, fft_eps=s.fft_eps,
                    width_multiplier=config.width_multiplier, dtype=jnp.float32,
                    orthogonality=s.orthogonality)
  return Classifier(backbone, siriib, tuple(config.mean), tuple(config.std))
