"""analysis/scorecam: Score-CAM (Wang et al. 2020) finds the image region a class's logit
reads, follows it when it moves, and does not depend on how its passes are chunked."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax.analysis.scorecam import heatmap_rows, score_cam
from siriib_jax.models import Classifier
from tests.helpers import tiny_model

SIZE, GRID = 16, 4  # 16×16 images, a 4×4 grid of 4×4-pixel cells.
CELL = SIZE // GRID


class CellMaps(nn.Module):
  """The last stage of the test backbone: (B, 4, 4, 16) maps, channel 4i + j the mean of
  cell (i, j) of the image at position (i, j) and 0 elsewhere (one located map per cell)."""

  @nn.compact
  def __call__(self, x):
    b = x.shape[0]
    cells = x.reshape(b, GRID, CELL, GRID, CELL, 3).mean(axis=(2, 4, 5))
    return cells[..., None] * jnp.eye(GRID * GRID).reshape(GRID, GRID, GRID * GRID)


class RegionBackbone(nn.Module):
  """Two classes: logit 0 is 0, logit 1 = gain · (mean of the pixels of `cell` − 1/4),
  so that only that cell of the image moves the class-1 score."""
  cell: tuple
  gain: float = 20.0

  @nn.compact
  def __call__(self, x, skips=(), train=False):
    CellMaps(name="stage1_block0")(x)  # The maps Score-CAM captures.
    i, j = self.cell
    evidence = x[:, i * CELL:(i + 1) * CELL, j * CELL:(j + 1) * CELL].mean(axis=(1, 2, 3))
    logit = self.gain * (evidence - 0.25)
    return jnp.stack([jnp.zeros_like(logit), logit], axis=-1)


def _region_model(cell):
  return Classifier(RegionBackbone(cell), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _argmax_cell(heat):
  """The grid cell of each heatmap's maximum: (B, 2)."""
  flat = heat.reshape(heat.shape[0], -1).argmax(axis=1)
  rows, cols = np.unravel_index(flat, heat.shape[1:])
  return np.stack([rows // CELL, cols // CELL], axis=1)


@pytest.mark.parametrize("cell", [(0, 2), (3, 1)])  # Off the diagonal: a transpose fails.
def test_the_maximum_lies_in_the_region_the_class_reads(cell):
  x = jax.random.uniform(jax.random.key(0), (3, SIZE, SIZE, 3), minval=0.4, maxval=0.6)
  model = _region_model(cell)
  variables = model.init(jax.random.key(1), x)
  assert np.all(np.argmax(model.apply(variables, x).logits, axis=1) == 1)
  heat = score_cam(model, variables, x, channels_per_pass=5)  # Predicted class: 1.
  assert heat.shape == (3, SIZE, SIZE) and heat.dtype == np.float32
  assert heat.min() >= 0.0 and np.isclose(heat.max(), 1.0)
  np.testing.assert_array_equal(_argmax_cell(heat), [cell] * 3)
  # Class 0, whose score falls when the region is kept: its maximum is elsewhere.
  other = score_cam(model, variables, x, labels=np.zeros(3, np.int32))
  assert not np.any(np.all(_argmax_cell(other) == cell, axis=1))


def test_chunking_and_padding_do_not_change_the_heatmaps():
  model, variables = tiny_model("resnet18", siriib=True)
  x = jax.random.uniform(jax.random.key(2), (2, 16, 16, 3))
  whole = score_cam(model, variables, x, channels_per_pass=64)  # All 64 maps in one pass.
  chunked = score_cam(model, variables, x, channels_per_pass=6)  # 11 passes, the last padded.
  assert whole.shape == (2, 16, 16)
  assert 0.0 <= whole.min() and whole.max() <= 1.0
  np.testing.assert_allclose(chunked, whole, atol=1e-5)
  with pytest.raises(ValueError, match="labels"):
    score_cam(model, variables, x, labels=np.zeros(3, np.int32))
  with pytest.raises(ValueError, match="channels_per_pass"):
    score_cam(model, variables, x, channels_per_pass=0)


def test_heatmap_rows_put_the_images_first_and_check_shapes():
  x = np.full((2, 4, 4, 3), 0.5, np.float32)
  rows = heatmap_rows(x, {"ResNet-18": np.zeros((2, 4, 4)), "ResNet-18-SR": np.ones((2, 4, 4))})
  assert [r.label for r in rows] == ["x", "ResNet-18", "ResNet-18-SR"]
  assert rows[2].images.shape == (2, 4, 4)
  with pytest.raises(ValueError, match="ResNet-18"):
    heatmap_rows(x, {"ResNet-18": np.zeros((2, 4, 4, 3))})
