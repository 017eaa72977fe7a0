"""SiRIIB: the SR block, x_avg, the feature extractor c(·) and the IB skips p_i(·).

Paper §3.2, §4.2 and App. B; every choice the paper leaves open is the one in SPEC §1–2.
Inputs are raw images in [0, 1], NHWC; nothing here is normalised.
"""

import math
from typing import Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from siriib_jax.models.skip_targets import SkipTarget, scaled_widths
from siriib_jax.models.conv import conv_general_dilated
from siriib_jax.models.layers import Conv1x1, Conv3x3, ConvWithBias, batch_norm, conv_init
from siriib_jax.models.resnet import PreActBlock
from siriib_jax.svd import orthonormal_rows

EXTRACTOR_VARIANTS = ("base", "L", "XL")
# How the SR block's W is kept orthogonal (`model.siriib.orthogonality`): "penalty", a free
# kernel pulled towards orthonormal rows by R_τ; "exact", orthonormal rows by construction
# (`orthonormal_rows`).
ORTHOGONALITY_MODES = ("exact", "penalty")
# The SR block's submodule that holds W's parameter, per mode. The names differ so that a
# checkpoint of one mode cannot be restored into a model of the other: the same 3 × N
# numbers mean W itself in "penalty" mode and the unconstrained A of W = polar(A) in "exact".
ORTHOGONAL_MODULE = {"penalty": "orthogonal", "exact": "orthogonal_polar"}
# Where the SR blocks sit (`model.siriib.placement`): "plugin", SiRIIB inside the classifier
# (x_avg → c(·) → p_i → the backbone's skips, paper §4.2); "purifier", the SR blocks alone
# (x_avg only), trained with L_svd beside a plain backbone and never feeding it (paper App.
# C.5, Table 8; docs/purification.md).
PLACEMENTS = ("plugin", "purifier")
# Guards of the IB path against collapse (`model.siriib.guard`, docs/model.md): "none",
# the paper's form; "affine_free_bn", c(·)'s last BatchNorm without learned scale and shift
# (`FeatureExtractor`); "variance", a VICReg variance hinge on each f_i in the loss
# (`losses.variance_hinge`, weighted by `loss.variance_weight`).
GUARDS = ("none", "affine_free_bn", "variance")

# The classifier's top-level parameter key of each placement. The keys differ so that a
# checkpoint of one placement cannot be restored into a model of the other.
PLACEMENT_KEY = {"plugin": "siriib", "purifier": "purifier"}


def sr_weight_matrices(params) -> dict:
  """Every SR block's W as used in the forward pass, read from a model's parameters.

  Args:
    params: a parameter tree (of the whole classifier, of SiRIIB or of one SR block).
  Returns:
    {path of the SR block ("siriib/sr0", …): W (in_channels × orth_channels) float32};
    empty for a model without SiRIIB. In "exact" mode W is `orthonormal_rows` of the
    stored parameter.
  """
  matrices = {}
  for path, leaf in flax.traverse_util.flatten_dict(params).items():
    if path[-1] != "kernel" or len(path) < 2:
      continue
    name = "/".join(path[:-2])
    if path[-2] == ORTHOGONAL_MODULE["penalty"]:
      matrices[name] = leaf.reshape(-1, leaf.shape[-1]).astype(jnp.float32)
    elif path[-2] == ORTHOGONAL_MODULE["exact"]:
      matrices[name] = orthonormal_rows(leaf.reshape(-1, leaf.shape[-1]))
  return matrices


def modulate_amplitude(y: jnp.ndarray, amplitude_fn: Callable[[jnp.ndarray], jnp.ndarray],
                       eps: float = 1e-8) -> jnp.ndarray:
  """Singular-value branch of SR (paper §3.2, SPEC §1.2): modulate the Fourier amplitude.

  `F = rfft2(y)` over (H, W) per channel; `F' = amplitude_fn(|F|) · F / |F|`;
  returns `irfft2(F', s=(H, W))`. `|F|` is `sqrt(re² + im² + eps²)`, so the phase
  `F / |F|` and its gradient stay finite where `F = 0` (no `angle`, whose gradient is
  undefined there), and an identity `amplitude_fn` returns `y` exactly up to rounding.
  The transform runs in float32 whatever `y`'s dtype.

  Args:
    y: (B, H, W, C) real.
    amplitude_fn: maps amplitudes (B, H, W // 2 + 1, C) to modulated amplitudes, same shape.
    eps: amplitude floor.
  Returns:
    (B, H, W, C) float32.
  """
  height, width = y.shape[1:3]
  spectrum = jnp.fft.rfft2(y.astype(jnp.float32), axes=(1, 2))
  amplitude = jnp.sqrt(jnp.real(spectrum)**2 + jnp.imag(spectrum)**2 + eps**2)
  modulated = amplitude_fn(amplitude).astype(jnp.float32)
  return jnp.fft.irfft2(spectrum * (modulated / amplitude), s=(height, width), axes=(1, 2))


class SRBlock(nn.Module):
  """Singular regularisation of one scale (paper §3.2, App. B; SPEC §1).

  1. `y = x · W`, a bias-free 1×1 conv 3 → `orth_channels` whose 3 × `orth_channels` W
     should have orthonormal rows (an isometry keeps the singular values of the channel ×
     pixel matrix, §3.2). `orthogonality` says how: "penalty", W is the free kernel under
     `orthogonal`, pulled towards orthonormal rows by `R_τ` in the loss; "exact", the
     kernel under `orthogonal_polar` is an unconstrained A and W = `orthonormal_rows(A)`
     at every call (`R_τ` is then 0 up to rounding). Same 3 × `orth_channels` numbers and
     MACs in both modes.
  2. `z`: the amplitude of `rfft2(y)` modulated by a 1×1 conv with bias, phase kept.
  3. `BatchNorm(conv1x1(concat[y, z]))` back to the input's channels.

  Input (B, H, W, C); output (B, H, W, C), before the sigmoid.
  """
  orth_channels: int = 12
  fft_eps: float = 1e-8
  dtype: jnp.dtype = jnp.float32
  orthogonality: str = "exact"

  @nn.compact
  def __call__(self, x, train: bool):
    if self.orthogonality not in ORTHOGONALITY_MODES:
      raise ValueError(f"orthogonality must be one of {ORTHOGONALITY_MODES}, "
                       f"got {self.orthogonality!r}")
    channels = x.shape[-1]
    conv = conv_general_dilated
    if self.orthogonality == "exact":
      def conv(lhs, rhs, *args, **kwargs):  # rhs: the (1, 1, C, orth_channels) parameter A.
        w = orthonormal_rows(rhs.reshape(rhs.shape[-2:])).astype(rhs.dtype)
        return conv_general_dilated(lhs, w.reshape(rhs.shape), *args, **kwargs)
    y = Conv1x1(self.orth_channels, dtype=self.dtype, kernel_init=nn.initializers.orthogonal(),
                conv_general_dilated=conv, name=ORTHOGONAL_MODULE[self.orthogonality])(x)
    amplitude_conv = ConvWithBias(self.orth_channels, (1, 1), dtype=jnp.float32,
                                  name="amplitude")
    z = modulate_amplitude(y, amplitude_conv, self.fft_eps)
    fused = Conv1x1(channels, dtype=self.dtype, name="fuse")(
        jnp.concatenate([y, z.astype(y.dtype)], axis=-1))
    return batch_norm(train, self.dtype, name="fuse_bn")(fused)


def resize_bilinear(x: jnp.ndarray, size: int) -> jnp.ndarray:
  """Bilinear resize of (B, H, W, C) to (B, size, size, C), half-pixel centres and no
  anti-aliasing, as PyTorch's `interpolate(mode='bilinear', align_corners=False)`."""
  if x.shape[1:3] == (size, size):
    return x
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear",
                          antialias=False)


class PooledConv(nn.Module):
  """`avg_pool(conv(x) + bias, stride)`: a k×k convolution with bias and "same" zero padding,
  then `stride`×`stride` average pooling — a SiRIIB projection `p_i` into a strided target.

  Computed as one stride-`stride` convolution whose (k + stride − 1)² kernel is the k×k
  kernel averaged over the stride² shifts of a pooling window: the same function (up to
  the order of summation) in 1/stride² of the convolution's work, e.g. 3×3 64 → 128 at
  32×32 then 2×2 pooling: 0.46 s instead of 0.77 s forward + input gradient (batch 128,
  this CPU, beside another job). Parameters `kernel` (k, k, C_in, features) and `bias`, as `nn.Conv`'s;
  `paper_macs` is the MAC count of the convolution at full resolution, which the paper
  counts (`complexity.py`).

  Input (B, H, W, C_in) with H, W divisible by `stride`; output (B, H/stride, W/stride,
  features).
  """
  features: int
  kernel_size: int = 3
  stride: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, s = self.kernel_size, self.stride
    kernel = self.param("kernel", conv_init, (k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    pooled_kernel = sum(jnp.pad(kernel, ((dy, s - 1 - dy), (dx, s - 1 - dx), (0, 0), (0, 0)))
                        for dy in range(s) for dx in range(s)) / s**2
    pad = (k - 1) // 2
    y = conv_general_dilated(x.astype(self.dtype), pooled_kernel.astype(self.dtype), (s, s),
                             ((pad, k - 1 - pad),) * 2,
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)

  def paper_macs(self, output_shape) -> int:
    """MACs of the full-resolution k×k convolution that produces an output of this shape."""
    return (math.prod(output_shape) * self.stride**2 * self.kernel_size**2
            * self.variables["params"]["kernel"].shape[2])


class FeatureExtractor(nn.Module):
  """c(·) (App. B, C.2): deep features of x_avg at full resolution.

  `base`: three 3×3 convs 16 → 32 → 64, each followed by BN and ReLU; 64 channels out.
  `L` / `XL` **[choice]** (the paper's App. C.2 text is garbled; this reading gives Table 5
  within 0.03 M parameters and 0.02 G MACs): a 3×3 conv to 16 channels, then 2 / 4
  cascaded pre-activation basic blocks of `width` channels (the backbone's stage-1 width,
  160 for WRN-28-10) and BN-ReLU, i.e. a copy of the WRN stem and first stage.
  The fixed widths (16, 32, 64 and the 16 of `L` / `XL`) are scaled by `width_multiplier`,
  the backbone's, so a narrow network has a SiRIIB as narrow (1 is the paper's).
  `guard` (`GUARDS`): "affine_free_bn" drops the learned scale and shift of the BatchNorm
  before the last ReLU (as SimSiam's projector ends, Chen & He, CVPR 2021), so no learned
  negative shift can put every unit below 0 for every image; any other value is the paper's.
  """
  variant: str = "base"
  width: int = 64
  width_multiplier: float = 1.0
  dtype: jnp.dtype = jnp.float32
  guard: str = "none"

  def _last_norm(self, train: bool, name: str):
    """c(·)'s last BatchNorm; with guard "affine_free_bn" without learned scale and shift,
    named `<name>_affine_free` so that checkpoints of the two forms do not mix."""
    if self.guard == "affine_free_bn":
      return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          dtype=self.dtype, use_scale=False, use_bias=False,
                          use_fast_variance=False, name=f"{name}_affine_free")
    return batch_norm(train, self.dtype, name=name)

  @nn.compact
  def __call__(self, x, train: bool):
    widths = scaled_widths((16, 32, 64), self.width_multiplier)
    if self.variant == "base":
      for i, width in enumerate(widths):
        x = Conv3x3(width, dtype=self.dtype, name=f"conv{i}")(x)
        norm = (self._last_norm(train, f"bn{i}") if i == len(widths) - 1
                else batch_norm(train, self.dtype, name=f"bn{i}"))
        x = nn.relu(norm(x))
      return x
    x = Conv3x3(widths[0], dtype=self.dtype, name="conv0")(x)
    for i in range({"L": 2, "XL": 4}[self.variant]):
      x = PreActBlock(self.width, 1, self.dtype, name=f"block{i}")(x, train)
    return nn.relu(self._last_norm(train, "final_bn")(x))


def sr_average(x: jnp.ndarray, scales: Sequence[int], orth_channels: int, fft_eps: float,
               dtype, orthogonality: str, train: bool) -> jnp.ndarray:
  """x_avg = mean_s upsample(sigmoid(SR_s(resize(x, s)))) (paper §4.2, Fig. 3; SPEC §2).

  Call it from a compact method only: it creates one `SRBlock` per scale, named `sr{i}`,
  as submodules of the calling module (SiRIIB's and the purifier's SR parameters are
  therefore laid out alike: `<module>/sr{i}/…`).

  Args:
    x: raw images (B, H, W, 3) in [0, 1], H = W.
    scales: the side of each scale's resized image (bilinear, no anti-aliasing).
    orth_channels, fft_eps, dtype, orthogonality: the `SRBlock`s'.
    train: BatchNorm mode of the blocks.
  Returns:
    x_avg (B, H, W, 3) float32 in (0, 1).
  """
  size = x.shape[1]
  maps = []
  for i, scale in enumerate(scales):
    sr = SRBlock(orth_channels, fft_eps, dtype, orthogonality, name=f"sr{i}")
    out = nn.sigmoid(sr(resize_bilinear(x, scale), train).astype(jnp.float32))
    maps.append(resize_bilinear(out, size))
  return sum(maps) / len(maps)


class SRPurifier(nn.Module):
  """The SR blocks alone: an input purifier `x → x_avg` (paper App. C.5, Table 8; C.6).

  The same `x_avg` as SiRIIB's (`sr_average`: an independent `SRBlock` per scale, sigmoid,
  bilinear resizing, mean), without c(·) and the p_i. With `model.siriib.placement =
  "purifier"` the classifier holds it beside the backbone, fed the same input and
  connected to nothing: the train step fits it with `L_svd(x_avg(x_adv), x)` on the
  adversarial examples of the backbone's own adversarial training (docs/purification.md).

  Args of `__call__`:
    x: raw images (B, H, W, 3) in [0, 1], H = W.
    train: BatchNorm mode of the SR blocks.
  Returns:
    x_avg (B, H, W, 3) float32 in (0, 1).
  """
  scales: Sequence[int] = (32, 24, 16, 8)
  orth_channels: int = 12
  fft_eps: float = 1e-8
  dtype: jnp.dtype = jnp.float32
  orthogonality: str = "exact"

  @nn.compact
  def __call__(self, x, train: bool = False):
    return sr_average(x, self.scales, self.orth_channels, self.fft_eps, self.dtype,
                      self.orthogonality, train)


class SiRIIB(nn.Module):
  """The SiRIIB plug-in (paper §4.2, Fig. 3; SPEC §2).

  `x_avg = mean_s upsample(sigmoid(SR_s(resize(x, s))))` over `scales` (`sr_average`: an
  independent SR block per scale, bilinear resizing), then `f_i = p_i(c(x_avg))` for the first
  `num_skips` skip targets: `p_i` is a 3×3 conv (with bias) from c(·)'s channels to the
  target's channels at full resolution, average-pooled by the target's stride (one
  `PooledConv` where the stride is > 1). `orthogonality` is the SR blocks' (`SRBlock`).

  Two compute dtypes (parameters are float32 whatever they are): `dtype`, that of c(·) and
  the p_i, and `sr_dtype`, that of the SR blocks (`sr_average`); x_avg is float32 either
  way. `models.create_model` chooses both (the reason is in its docstring).

  Args of `__call__`:
    x: raw images (B, H, W, 3) in [0, 1], H = W.
    targets: the backbone's skip targets.
  Returns:
    x_avg (B, H, W, 3) in (0, 1), and the tuple of `f_i`, each (B, H/stride, W/stride,
    channels) for its target.
  """
  scales: Sequence[int] = (32, 24, 16, 8)
  num_skips: int = 3
  variant: str = "base"
  orth_channels: int = 12
  fft_eps: float = 1e-8
  width_multiplier: float = 1.0
  dtype: jnp.dtype = jnp.float32
  orthogonality: str = "exact"
  sr_dtype: jnp.dtype = jnp.float32
  guard: str = "none"

  @nn.compact
  def __call__(self, x, targets: Sequence[SkipTarget], train: bool = False):
    x_avg = sr_average(x, self.scales, self.orth_channels, self.fft_eps, self.sr_dtype,
                       self.orthogonality, train)
    h = FeatureExtractor(self.variant, targets[1].channels, self.width_multiplier,
                         self.dtype, self.guard, name="extractor")(x_avg, train)
    # c(x_avg), c(·)'s last ReLU, for the IB-path health (`evaluation/ib_path.py`); stored
    # only where the caller makes "intermediates" mutable.
    self.sow("intermediates", "extractor_output", h)
    features = []
    for i, target in enumerate(targets[:self.num_skips]):
      if target.stride > 1:
        projection = PooledConv(target.channels, 3, target.stride, self.dtype,
                                name=f"projection{i}")
      else:
        projection = ConvWithBias(target.channels, (3, 3), padding=((1, 1), (1, 1)),
                                  dtype=self.dtype, name=f"projection{i}")
      features.append(projection(h))
    return x_avg, tuple(features)
