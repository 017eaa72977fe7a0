"""Score-CAM heatmaps (paper Fig. 7, §5: "which area of the given image is the more
sensitive"), after Wang et al., "Score-CAM: Score-Weighted Visual Explanations for
Convolutional Neural Networks", CVPR Workshops 2020.

For an image x of class c and the K activation maps A_k (h, w) of the backbone's last
convolutional stage (`features.final_feature_maps`: the map its head pools):

1. each A_k is upsampled bilinearly to the input size (H, W) and min-max normalised to a
   mask M_k = (A_k↑ − min) / (max − min) in [0, 1];
2. the masked input is `b + M_k ⊙ (x − b)`, with the baseline b = 0 (black) by default,
   i.e. `x ⊙ M_k` on the model's [0, 1] input (the model normalises inside, so this is not
   the mean-colour baseline of masking a normalised tensor; pass `baseline` for another);
3. the channel weight is w_k = softmax(model(masked input))_c, the class's probability
   (the score as the reference implementation uses it; the paper's `− f(x_b)`, the
   baseline's score, is left out);
4. heatmap = ReLU(Σ_k w_k A_k↑), min-max normalised per image to [0, 1].

A map that is constant over the image (max = min, e.g. a channel that is zero everywhere)
gives no mask and gets w_k = 0. The K masked forward passes of each image run in chunks of
`channels_per_pass` channels (B × channels_per_pass images per pass; ResNet-18 has 512
maps), the last chunk padded with empty masks whose weights are dropped.
"""

import functools
from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from siriib_jax.analysis.features import final_feature_maps
from siriib_jax.analysis.xavg import Row
from siriib_jax.attacks.threat_model import check_images

# A map whose range over the image is below this is constant: no mask, weight 0.
_FLAT = 1e-12


@jax.jit
def _masks(maps: jnp.ndarray, x: jnp.ndarray):
  """Upsampled maps (B, H, W, K), their normalised masks (B, K, H, W) and which are valid
  (B, K)."""
  b, height, width, _ = x.shape
  up = jax.image.resize(maps, (b, height, width, maps.shape[-1]), "bilinear")
  low = up.min(axis=(1, 2))
  span = up.max(axis=(1, 2)) - low
  valid = span > _FLAT
  masks = (up - low[:, None, None]) / jnp.where(valid, span, 1.0)[:, None, None]
  masks = jnp.where(valid[:, None, None], masks, 0.0)
  return up, jnp.moveaxis(masks, -1, 1), valid


@functools.partial(jax.jit, static_argnums=0)
def _class_scores(model, variables, x, masks, classes, baseline):
  """Softmax probability of `classes` (B,) for every masked input: x (B, H, W, 3), masks
  (B, k, H, W) → (B, k)."""
  b, k, height, width = masks.shape
  masked = baseline + masks[..., None] * (x[:, None] - baseline)
  output = model.apply(variables, masked.reshape(b * k, height, width, x.shape[-1]),
                       train=False)
  logits = getattr(output, "logits", output).astype(jnp.float32).reshape(b, k, -1)
  probabilities = jax.nn.softmax(logits, axis=-1)
  return jnp.take_along_axis(probabilities, classes[:, None, None], axis=-1)[..., 0]


@jax.jit
def _combine(up, weights):
  heat = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", up, weights))
  low = heat.min(axis=(1, 2), keepdims=True)
  span = heat.max(axis=(1, 2), keepdims=True) - low
  return jnp.where(span > 0, (heat - low) / jnp.where(span > 0, span, 1.0), 0.0)


def score_cam(model: nn.Module, variables, x: np.ndarray, labels: Optional[np.ndarray] = None,
              channels_per_pass: int = 64, baseline: float | np.ndarray = 0.0) -> np.ndarray:
  """Score-CAM heatmaps of a batch of images (see the module doc for the steps).

  Args:
    model: a `models.Classifier` (the maps come from its backbone's last stage; the
      scores from the whole model, SiRIIB included).
    variables: its variables (running batch statistics).
    x: (B, H, W, 3) float images in [0, 1], or uint8 (`threat_model.check_images`:
      ValueError for values outside [0, 1] or not finite).
    labels: (B,) int, the class to explain per image; default the predicted class.
    channels_per_pass: channels masked per forward pass (B × this many images a pass).
    baseline: what a mask's zeros show: a scalar or (3,) colour in [0, 1]; 0 is black.

  Returns:
    (B, H, W) float32 in [0, 1]; all zeros for an image whose weighted sum is ≤ 0
    everywhere.

  Raises:
    ValueError: `channels_per_pass` < 1, or `labels` of the wrong shape.
  """
  if channels_per_pass < 1:
    raise ValueError(f"channels_per_pass must be ≥ 1, got {channels_per_pass}")
  x = jnp.asarray(check_images(x, "x"))
  maps, logits = final_feature_maps(model, variables, x)
  if labels is None:
    classes = jnp.argmax(logits, axis=-1)
  else:
    classes = jnp.asarray(labels, jnp.int32)
    if classes.shape != (x.shape[0],):
      raise ValueError(f"labels must have shape ({x.shape[0]},), got {classes.shape}")
  up, masks, valid = _masks(maps, x)
  channels = masks.shape[1]
  chunk = min(channels_per_pass, channels)
  padded = -(-channels // chunk) * chunk
  masks = jnp.pad(masks, ((0, 0), (0, padded - channels), (0, 0), (0, 0)))
  baseline = jnp.asarray(baseline, jnp.float32)
  scores = [_class_scores(model, variables, x, masks[:, start:start + chunk], classes, baseline)
            for start in range(0, padded, chunk)]
  weights = jnp.where(valid, jnp.concatenate(scores, axis=1)[:, :channels], 0.0)
  return np.asarray(_combine(up, weights), np.float32)


def heatmap_rows(x: np.ndarray, by_model: Mapping[str, np.ndarray]) -> list[Row]:
  """Fig. 7's rows: the clean images, then one row of heatmaps per model (e.g.
  'ResNet-18', 'ResNet-18-SR'), drawn by `plotting.image_grid` with a colour map.

  Args:
    x: (N, H, W, 3) clean images in [0, 1] (or uint8; ValueError outside it).
    by_model: row label → heatmaps (N, H, W) in [0, 1] (`score_cam`); rows in its order.

  Returns:
    1 + len(by_model) `Row`s.

  Raises:
    ValueError: a heatmap array is not (N, H, W).
  """
  x = check_images(x, "x")
  rows = [Row("x", x)]
  for label, heat in by_model.items():
    heat = np.asarray(heat, np.float32)
    if heat.shape != x.shape[:3]:
      raise ValueError(f"heatmaps of {label!r} have shape {heat.shape}, expected "
                       f"{x.shape[:3]} (one per image)")
    rows.append(Row(label, heat))
  return rows
