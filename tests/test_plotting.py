"""siriib_jax/plotting: picture grids with row labels and embedding panels, written as PNGs
that show what they were given."""

import numpy as np
import pytest
from PIL import Image

from siriib_jax.plotting import (accuracy_scatter, embedding_figure, image_grid,
                                         paired_bars, save_png)
from siriib_jax.analysis.xavg import Row


def _read(path):
  with Image.open(path) as image:
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def test_a_grid_has_one_labelled_row_per_entry_and_shows_its_pixels(tmp_path):
  red = np.zeros((3, 8, 8, 3), np.float32)
  red[..., 0] = 1.0
  heat = np.linspace(0, 1, 3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
  rows = [Row("x", red), Row("heatmap", heat), ("top", np.ones((3, 8, 8, 1)))]
  figure = image_grid(rows, title="Fig. 9", column_labels=["a", "b", "c"])
  assert len(figure.axes) == 9
  assert [figure.axes[3 * r].get_ylabel() for r in range(3)] == ["x", "heatmap", "top"]
  assert [ax.get_title() for ax in figure.axes[:3]] == ["a", "b", "c"]
  path = save_png(figure, str(tmp_path / "deep" / "grid.png"))
  pixels = _read(path)
  assert pixels.shape[0] > 100 and pixels.shape[1] > 100
  # What was given is drawn: the RGB row's pure red (jet has none), and the single-channel
  # row of ones through the colour map: jet(1) is dark red (0.5, 0, 0).
  assert np.any(np.all(pixels == [255, 0, 0], axis=-1))
  assert np.any(np.all(np.abs(pixels.astype(int) - [128, 0, 0]) <= 1, axis=-1))


@pytest.mark.parametrize("rows,fragment", [
    ([], "at least one row"),
    ([("x", np.zeros((2, 4, 4, 3))), ("y", np.zeros((3, 4, 4, 3)))], "same test images"),
    ([("d", np.full((2, 4, 4, 3), -0.5))], "outside [0, 1]"),
    ([("n", np.full((2, 4, 4, 3), np.nan))], "NaN"),
    ([("s", np.zeros((2, 4, 4, 2)))], "(N, H, W, 3)"),
])
def test_bad_rows_are_refused(rows, fragment):
  with pytest.raises(ValueError) as error:
    image_grid(rows)
  assert fragment in str(error.value)


def test_embedding_panels_share_the_given_limits_and_colour_by_class(tmp_path):
  labels = np.arange(12) % 3
  rng = np.random.default_rng(0)
  panels = {"ResNet-18": rng.normal(size=(12, 2)), "ResNet-18-SR": 5 * rng.normal(size=(12, 2))}
  limits = ((-20.0, 20.0), (-15.0, 15.0))
  figure = embedding_figure(panels, labels, limits, class_names=["a", "b", "c"])
  assert [ax.get_title() for ax in figure.axes] == ["ResNet-18", "ResNet-18-SR"]
  for ax in figure.axes:
    assert ax.get_xlim() == limits[0] and ax.get_ylim() == limits[1]
    colours = [tuple(c.get_facecolor()[0]) for c in ax.collections]
    assert len(ax.collections) == 3 and len(set(colours)) == 3  # One colour per class.
  assert [t.get_text() for t in figure.axes[-1].get_legend().get_texts()] == ["a", "b", "c"]
  _read(save_png(figure, str(tmp_path / "tsne.png")))
  with pytest.raises(ValueError, match="one per label"):
    embedding_figure({"p": np.zeros((11, 2))}, labels, limits)


def test_accuracy_scatter_puts_each_run_at_its_clean_and_robust_accuracy(tmp_path):
  points = {"ResNet-18": (False, 80.0, {"PGD-20": 40.0, "AA": 35.0}),
            "ResNet-18-SR": (True, 82.0, {"PGD-20": 45.0, "AA": 38.0})}
  figure = accuracy_scatter(points)
  assert [ax.get_title() for ax in figure.axes] == ["PGD-20", "AA"]
  for ax, attack in zip(figure.axes, ("PGD-20", "AA")):
    for collection, (siriib, clean, robust) in zip(ax.collections, points.values()):
      np.testing.assert_allclose(collection.get_offsets()[0], (clean, robust[attack]))
      hollow = collection.get_facecolors().size == 0
      assert hollow == siriib  # The paper: solid backbones, hollow SiRIIB models.
  save_png(figure, str(tmp_path / "scatter.png"))
  with pytest.raises(ValueError, match="same attacks"):
    accuracy_scatter({"a": (False, 1.0, {"PGD-20": 1.0}), "b": (True, 1.0, {"AA": 1.0})})


def test_paired_bars_draw_each_accuracy_at_its_height(tmp_path):
  figure = paired_bars(["PGD-20", "CW"], [40.0, 30.0], [70.0, 65.0], ("x_adv", "x_swap"),
                       reference=80.0)
  ax = figure.axes[0]
  heights = [patch.get_height() for patch in ax.patches]
  assert heights == [40.0, 30.0, 70.0, 65.0]
  assert [t.get_text() for t in ax.get_xticklabels()] == ["PGD-20", "CW"]
  assert ax.lines[0].get_ydata()[0] == 80.0  # The clean accuracy's line.
  save_png(figure, str(tmp_path / "bars.png"))
  with pytest.raises(ValueError, match="as many values"):
    paired_bars(["PGD-20"], [1.0, 2.0], [1.0], ("a", "b"))
