"""The classifier: a backbone with optional SiRIIB and normalisation inside, and
`create_model`, the factory that checks the `model` block and builds it."""

from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from siriib_jax.config_errors import ConfigError, check_choice, fail
from siriib_jax.models.backbones import BACKBONES
from siriib_jax.models.siriib import (EXTRACTOR_VARIANTS, GUARDS, ORTHOGONALITY_MODES,
                                     PLACEMENT_KEY, PLACEMENTS, SiRIIB, SRPurifier)


@flax.struct.dataclass
class ModelOutput:
  """What the model returns.

  Attributes:
    logits: (B, num_classes) float32.
    x_avg: (B, H, W, 3) in (0, 1), SiRIIB's sigmoid-averaged SR output; None without SiRIIB.
    features: the IB skip features `f_i` added to the backbone, () without SiRIIB.
    purified: (B, H, W, 3) in (0, 1), the x_avg of the detached SR purifier
      (`model.siriib.placement = "purifier"`), which the logits do not see; None otherwise.
      `x_avg` and `features` are then None and () (the classifier is the plain backbone).
  """
  logits: jnp.ndarray
  x_avg: Optional[jnp.ndarray] = None
  features: tuple = ()
  purified: Optional[jnp.ndarray] = None


class Classifier(nn.Module):
  """Images in [0, 1] (B, H, W, 3) → `ModelOutput`.

  SiRIIB sees the raw image; the backbone sees `(x − mean) / std`, with the `f_i` added to
  its skip targets. Parameters: `{'backbone': …, 'siriib': …}`, the backbone's tree being
  the same as without SiRIIB.

  With a `purifier` (`SRPurifier`, placement "purifier"; at most one of `siriib` and
  `purifier`), the logits are the plain backbone's on x and the purifier's x_avg of the
  same x is returned beside them as `purified`, connected to nothing (paper App. C.5).
  Parameters: `{'backbone': …, 'purifier': …}`. `backbone_logits` and `purify` are the
  two parts alone (Table 8: `evaluation/purification.py`).
  """
  backbone: nn.Module
  siriib: Optional[SiRIIB] = None
  mean: Sequence[float] = (0.4914, 0.4822, 0.4465)
  std: Sequence[float] = (0.2471, 0.2435, 0.2616)
  purifier: Optional[SRPurifier] = None

  def __call__(self, x: jnp.ndarray, train: bool = False,
               skips: Optional[tuple] = None) -> ModelOutput:
    """`skips`: f_i to add in place of SiRIIB's own (each broadcastable to its target, e.g.
    their mean over a set of images: the skip ablation of `evaluation/ib_path.py`); SiRIIB
    then does not run and `x_avg` is None."""
    x = x.astype(jnp.float32)
    x_avg, features, purified = None, (), None
    if skips is not None:
      features = tuple(jnp.broadcast_to(f, (x.shape[0],) + f.shape[-3:]) for f in skips)
    elif self.siriib is not None:
      x_avg, features = self.siriib(x, self.backbone.skip_targets, train)
    if self.purifier is not None:
      purified = self.purifier(x, train)
    normalised = (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)
    logits = self.backbone(normalised, skips=features, train=train)
    return ModelOutput(logits, x_avg, features, purified)

  def backbone_logits(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """The backbone alone on x (B, H, W, 3) in [0, 1]: logits (B, K) float32, no skips.

    Raises:
      ValueError: a SiRIIB plug-in model, whose backbone is trained with the f_i added.
    """
    if self.siriib is not None:
      raise ValueError("backbone_logits: the backbone of a SiRIIB plug-in model needs its "
                       "skip features; use the model itself")
    normalised = (x.astype(jnp.float32) - jnp.asarray(self.mean)) / jnp.asarray(self.std)
    return self.backbone(normalised, skips=(), train=train).astype(jnp.float32)

  def siriib_features(self, x: jnp.ndarray, train: bool = False) -> tuple:
    """SiRIIB alone on x (B, H, W, 3) in [0, 1]: the tuple of `f_i` (as `ModelOutput.features`),
    without the backbone. The train step's clean pass for `L_info` (paper §4.2 needs
    `f_i^clean`, not clean logits): in train mode only SiRIIB's batch statistics move, so the
    backbone's running statistics see the batches its loss sees, as in the plain model.

    Raises:
      ValueError: the model has no SiRIIB plug-in.
    """
    if self.siriib is None:
      raise ValueError("siriib_features: the model has no SiRIIB plug-in (build it with "
                       "model.siriib.enabled=True and model.siriib.placement='plugin')")
    return self.siriib(x.astype(jnp.float32), self.backbone.skip_targets, train)[1]

  def purify(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """The purifier's x_avg (B, H, W, 3) in (0, 1) of x (B, H, W, 3) in [0, 1].

    Raises:
      ValueError: the model has no purifier (`model.siriib.placement` is not "purifier").
    """
    if self.purifier is None:
      raise ValueError("purify: the model has no SR purifier (build it with "
                       "model.siriib.enabled=True and model.siriib.placement='purifier')")
    return self.purifier(x.astype(jnp.float32), train)


def placement_of(params) -> Optional[str]:
  """The SiRIIB placement ("plugin", "purifier") a classifier's parameter tree was built
  with, from its top-level keys (`PLACEMENT_KEY`); None for a plain backbone or a tree
  that is not a classifier's."""
  keys = set(params) if hasattr(params, "keys") else set()
  found = [p for p in PLACEMENTS if PLACEMENT_KEY[p] in keys]
  return found[0] if len(found) == 1 else None


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
  check_choice("model.siriib.placement", s.placement, PLACEMENTS)
  if not s.enabled:
    return
  if s.placement == "plugin":  # c(·) and the p_i: the purifier has neither.
    if not 1 <= s.num_skips <= 3:
      fail("model.siriib.num_skips", s.num_skips, "it must be 1, 2 or 3 (the paper finds 4 "
           "or more do not converge, §5.2)")
    check_choice("model.siriib.variant", s.variant, EXTRACTOR_VARIANTS)
    check_choice("model.siriib.guard", s.guard, GUARDS)
  check_choice("model.siriib.orthogonality", s.orthogonality, ORTHOGONALITY_MODES)
  scales = tuple(s.scales)
  if not scales or any(not isinstance(v, int) or not 1 <= v <= image_size for v in scales):
    fail("model.siriib.scales", scales,
         f"each scale must be an integer in [1, {image_size}] (the image size)")
  if not isinstance(s.orth_channels, int) or s.orth_channels < 3:
    fail("model.siriib.orth_channels", s.orth_channels,
         "it must be an integer ≥ 3, so that the 3 × orth_channels kernel can have "
         "orthonormal rows")


def branch_dtypes(orthogonality: str, dtype: Any) -> tuple:
  """(c(·) and p_i's compute dtype, the SR blocks' compute dtype) of a model whose backbone
  computes in `dtype` (`create_model` documents why)."""
  return (dtype if orthogonality == "exact" else jnp.float32), jnp.float32


def create_model(config: ml_collections.ConfigDict, image_size: int,
                 dtype: Any = jnp.float32) -> Classifier:
  """Checks `config` (the `model` block) for images of `image_size`² and builds the
  classifier it names, before anything is compiled.

  Args:
    config: `config.model` (keys documented in `configs/default.py`).
    image_size: height = width of the input images.
    dtype: the backbone's compute dtype (parameters stay float32 everywhere). The one
      place that decides the SiRIIB branch's compute dtypes (`branch_dtypes`):
      - the SR blocks (the 1×1 conv with W, the FFT amplitude modulation, the fuse conv
        and its BN, the sigmoid and the resizing: x_avg, and so L_svd's SVD) always
        compute in float32;
      - c(·) (`FeatureExtractor`) and the p_i compute in `dtype` when
        `model.siriib.orthogonality` is "exact" (W orthonormal by construction, so it
        cannot blow up), and in float32 in "penalty" mode: there, with the whole branch in
        bf16, PGD-AT diverged (R_τ 2e9 at step 18 on CPU, an Inf loss on a GPU;
        BENCHMARKS.md §3c). docs/bf16_branch.md has the bf16 finiteness run.
      The purifier (placement "purifier") is SR blocks only, hence float32.

  With `model.siriib.enabled`, `model.siriib.placement` says where the SR blocks go:
  "plugin", SiRIIB in the classifier; "purifier", an `SRPurifier` beside the plain backbone
  (`Classifier`; `num_skips` and `variant` are then unused).

  Raises:
    ConfigError naming the first bad key, its value and the allowed values.
  """
  _validate_model_config(config, image_size)
  branch_dtype, sr_dtype = branch_dtypes(config.siriib.orthogonality, dtype)
  backbone = BACKBONES[config.name](num_classes=config.num_classes,
                                    width_multiplier=config.width_multiplier, dtype=dtype)
  siriib, purifier = None, None
  s = config.siriib
  if s.enabled and s.placement == "purifier":
    purifier = SRPurifier(scales=tuple(s.scales), orth_channels=s.orth_channels,
                          fft_eps=s.fft_eps, dtype=sr_dtype, orthogonality=s.orthogonality)
  elif s.enabled:
    for target in backbone.skip_targets:
      if image_size % target.stride:
        raise ConfigError(f"image size {image_size} is not divisible by the stride "
                          f"{target.stride} of a SiRIIB skip target of {config.name}")
    siriib = SiRIIB(scales=tuple(s.scales), num_skips=s.num_skips, variant=s.variant,
                    orth_channels=s.orth_channels, fft_eps=s.fft_eps,
                    width_multiplier=config.width_multiplier, dtype=branch_dtype,
                    orthogonality=s.orthogonality, sr_dtype=sr_dtype, guard=s.guard)
  return Classifier(backbone, siriib, tuple(config.mean), tuple(config.std), purifier)
