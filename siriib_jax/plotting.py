"""Drawing the analyses' figures with matplotlib — the package's only matplotlib user.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly (no pyplot):
nothing global is switched (no backend selection, no open-figure registry), so the module
is safe to import anywhere, headless included. Computation lives elsewhere (`analysis/`:
`xavg.py`, `scorecam.py`, `tsne.py`; `evaluation/svd_study.py`); this module only draws
arrays and writes PNGs, and imports nothing of the package, so every part can use it.

* `image_grid`: rows of pictures with a label at the left of each row (Fig. 4, 7, 9, 10, 11).
* `embedding_figure`: 2-D embeddings side by side on common axes, coloured by class (Fig. 8).
* `accuracy_scatter`: clean against robust accuracy per attack, baseline solid and SiRIIB
  hollow (Fig. 5, 6).
* `paired_bars`: two accuracies per attack, solid and hatched, with a reference line (the
  SVD swap study, Fig. 1).
* `save_png`: writes a figure to a PNG file.
"""

import os
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Values this far outside [0, 1] are rounding, clipped; farther is a caller's error.
_RANGE_TOLERANCE = 1e-3


def _check_row(label: str, images: np.ndarray, columns: int) -> np.ndarray:
  images = np.asarray(images, np.float32)
  if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
    raise ValueError(f"row {label!r}: images must be (N, H, W, 3), (N, H, W, 1) or "
                     f"(N, H, W), got {images.shape}")
  if len(images) != columns:
    raise ValueError(f"row {label!r} has {len(images)} images, the first row {columns}: "
                     "every row shows the same test images")
  if not np.all(np.isfinite(images)):
    raise ValueError(f"row {label!r} has NaN or infinite values")
  low, high = float(images.min()), float(images.max())
  if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
    raise ValueError(f"row {label!r} has values in [{low:.4g}, {high:.4g}], outside [0, 1]: "
                     "normalise it first (e.g. xavg.view_difference)")
  images = np.clip(images, 0.0, 1.0)
  return images[..., 0] if images.ndim == 4 and images.shape[-1] == 1 else images


def image_grid(rows: Sequence[tuple[str, np.ndarray]], title: Optional[str] = None,
               column_labels: Optional[Sequence[str]] = None, cell_inches: float = 1.0,
               cmap: str = "jet") -> Figure:
  """A grid of pictures: one row per `(label, images)`, the label at the row's left.

  Args:
    rows: `(label, images)` pairs (`xavg.Row`), top to bottom; images (N, H, W, 3) RGB
      or (N, H, W) / (N, H, W, 1) single-channel (drawn with `cmap`, 0 → its low end,
      1 → its high end), floats in [0, 1]; the same N in every row.
    title: drawn above the grid.
    column_labels: N labels drawn above the first row (e.g. the classes).
    cell_inches: the side of one picture, in inches.
    cmap: matplotlib colour map of single-channel rows (Score-CAM's heatmaps: 'jet').

  Returns:
    the `Figure` (save with `save_png`); `figure.axes[r * N + c]` is row r, column c, and
    its y-label is row r's label.

  Raises:
    ValueError: no rows, rows of different N, a bad shape, values outside [0, 1] or not
      finite, or `column_labels` not of length N.
  """
  if not rows:
    raise ValueError("image_grid needs at least one row")
  columns = len(rows[0][1])
  checked = [(str(label), _check_row(str(label), images, columns)) for label, images in rows]
  if column_labels is not None and len(column_labels) != columns:
    raise ValueError(f"{len(column_labels)} column labels for {columns} columns")
  figure = Figure(figsize=(cell_inches * columns, cell_inches * len(checked)))
  FigureCanvasAgg(figure)
  axes = figure.subplots(len(checked), columns, squeeze=False,
                         gridspec_kw={"wspace": 0.04, "hspace": 0.04})
  for r, (label, images) in enumerate(checked):
    for c in range(columns):
      ax = axes[r, c]
      if images.ndim == 3:
        ax.imshow(images[c], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
      else:
        ax.imshow(images[c], interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_visible(False)
      if r == 0 and column_labels is not None:
        ax.set_title(str(column_labels[c]), fontsize=7)
    axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
  if title:
    figure.suptitle(title, fontsize=9)
  return figure


def _class_colours(num_classes: int) -> np.ndarray:
  """(num_classes, 4) RGBA: tab10 up to 10 classes, tab20 up to 20, else turbo."""
  if num_classes <= 10:
    return colormaps["tab10"](np.arange(num_classes))
  if num_classes <= 20:
    return colormaps["tab20"](np.arange(num_classes))
  return colormaps["turbo"](np.linspace(0.0, 1.0, num_classes))


def embedding_figure(embeddings: Mapping[str, np.ndarray], labels: np.ndarray,
                     limits: tuple[tuple[float, float], tuple[float, float]],
                     class_names: Optional[Sequence[str]] = None, title: Optional[str] = None,
                     panel_inches: float = 4.0, point_size: float = 4.0) -> Figure:
  """2-D embeddings side by side, each point coloured by its class, every panel with the
  same axis limits (Fig. 8: "axes of both plots are zoomed to the same space").

  Args:
    embeddings: panel title → (N, 2) points (`tsne.embed_models`), left to right.
    labels: (N,) int classes of the points, shared by every panel.
    limits: ((x_min, x_max), (y_min, y_max)) for every panel (`tsne.shared_limits`).
    class_names: names of the classes for the legend (drawn when there are ≤ 20 classes).
    title: drawn above the panels.
    panel_inches: the side of one panel, in inches.
    point_size: marker area, in points².

  Returns:
    the `Figure`; `figure.axes[i]` is panel i (its limits are `limits`).

  Raises:
    ValueError: no panel, a panel not (N, 2), or labels not (N,).
  """
  if not embeddings:
    raise ValueError("embedding_figure needs at least one embedding")
  labels = np.asarray(labels)
  for name, points in embeddings.items():
    if np.shape(points) != (len(labels), 2):
      raise ValueError(f"panel {name!r}: expected ({len(labels)}, 2) points, one per label, "
                       f"got {np.shape(points)}")
  num_classes = int(labels.max()) + 1 if labels.size else 0
  if class_names is not None:
    num_classes = max(num_classes, len(class_names))
  colours = _class_colours(max(num_classes, 1))
  figure = Figure(figsize=(panel_inches * len(embeddings), panel_inches))
  FigureCanvasAgg(figure)
  axes = figure.subplots(1, len(embeddings), squeeze=False)[0]
  for ax, (name, points) in zip(axes, embeddings.items()):
    points = np.asarray(points, np.float32)
    for k in np.unique(labels):
      at = labels == k
      name_k = class_names[k] if class_names is not None else str(k)
      ax.scatter(points[at, 0], points[at, 1], s=point_size, color=colours[k], label=name_k,
                 linewidths=0)
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
    ax.set_title(name, fontsize=9)
    ax.tick_params(labelsize=7)
  if num_classes <= 20 and labels.size:
    axes[-1].legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5),
                    frameon=False)
  if title:
    figure.suptitle(title, fontsize=10)
  return figure


def accuracy_scatter(points: Mapping[str, tuple[bool, float, Mapping[str, float]]],
                     panel_inches: float = 3.0) -> Figure:
  """Clean accuracy (x) against robust accuracy (y), one panel per attack (Fig. 5, 6: the
  paper's solid markers are the backbones, hollow ones the SiRIIB models).

  Args:
    points: run label → (is SiRIIB, clean accuracy %, {attack label: robust accuracy %});
      every run with the same attack labels.
    panel_inches: the side of one panel.

  Returns:
    the `Figure`, one axes per attack in the first run's order, a legend of the runs.

  Raises:
    ValueError: no runs, or runs with different attacks.
  """
  if not points:
    raise ValueError("accuracy_scatter needs at least one run")
  attacks = list(next(iter(points.values()))[2])
  if any(list(robust) != attacks for _, _, robust in points.values()):
    raise ValueError(f"every run needs the same attacks, in order: {attacks}")
  figure = Figure(figsize=(panel_inches * max(1, len(attacks)), panel_inches))
  FigureCanvasAgg(figure)
  axes = figure.subplots(1, max(1, len(attacks)), squeeze=False)[0]
  colours = colormaps["tab10"](np.arange(len(points)) % 10)
  for ax, attack in zip(axes, attacks):
    for colour, (label, (siriib, clean, robust)) in zip(colours, points.items()):
      ax.scatter([clean], [robust[attack]], s=40, label=label, edgecolors=[colour],
                 facecolors="none" if siriib else [colour], linewidths=1.5)
    ax.set_title(attack, fontsize=9)
    ax.set_xlabel("clean accuracy (%)", fontsize=8)
  axes[0].set_ylabel("robust accuracy (%)", fontsize=8)
  axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
  return figure


def paired_bars(labels: Sequence[str], solid: Sequence[float], hatched: Sequence[float],
                names: tuple[str, str], reference: Optional[float] = None,
                reference_name: str = "clean") -> Figure:
  """Per label, two accuracies (%) side by side: `solid` filled, `hatched` hollow (Fig. 1:
  accuracy on x_adv and on U_adv Σ_clean V_advᵀ per attack).

  Args:
    labels: one per bar pair (e.g. the attacks).
    solid, hatched: accuracies in % (0–100), one per label.
    names: the legend entries of the solid and the hatched bars.
    reference: a horizontal dashed line at this accuracy (%), e.g. the clean accuracy.
    reference_name: its legend entry.

  Returns:
    the `Figure`, one axes, y from 0 to 100.

  Raises:
    ValueError: `solid` or `hatched` not one value per label.
  """
  if len(solid) != len(labels) or len(hatched) != len(labels):
    raise ValueError(f"{len(labels)} labels need as many values, got {len(solid)} solid "
                     f"and {len(hatched)} hatched")
  figure = Figure(figsize=(1.4 * len(labels) + 4, 3.5))
  FigureCanvasAgg(figure)
  ax = figure.subplots()
  where = np.arange(len(labels))
  ax.bar(where - 0.2, solid, 0.4, label=names[0], color="tab:blue")
  ax.bar(where + 0.2, hatched, 0.4, label=names[1], facecolor="white", edgecolor="tab:blue",
         hatch="//")
  if reference is not None:
    ax.axhline(reference, color="gray", linestyle="--", label=reference_name)
  ax.set_xticks(where, list(labels))
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(0, 100)
  ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
  return figure


def save_png(figure: Figure, path: str, dpi: int = 150) -> str:
  """Writes `figure` to `path` as a PNG (parent folders created; the bounding box fitted
  to what is drawn, row labels included).

  Returns:
    `path`.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  figure.savefig(path, format="png", dpi=dpi, bbox_inches="tight")
  return path
