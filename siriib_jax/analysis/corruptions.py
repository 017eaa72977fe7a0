"""Accuracy under common corruptions: CIFAR-10-C (paper App. C.6, Table 9).

CIFAR-10-C (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019) is the CIFAR-10 test set with each of 19
corruptions applied at severities 1–5. It is read from either of two sources, through one
iterator (`iterate_corruptions`):

* `ReleaseSource`: the folder people download (https://zenodo.org/record/2535967,
  `CIFAR-10-C.tar`): one `<corruption>.npy` per corruption, uint8 (50000, 32, 32, 3), the
  10,000 test images at severity 1, then severity 2, ... 5; and `labels.npy` (50000,), the
  10,000 test labels repeated 5 times. Any length 5·n is accepted (severity s is rows
  [(s−1)·n, s·n)). Files are memory-mapped: only the images used are read.
* `TfdsSource`: TFDS `cifar10_corrupted`, one builder config `<corruption>_<severity>`
  each, read with the project's `data.load_split` (so the same preparation, download rule
  and `DatasetNotFoundError` as every other TFDS dataset; it reads a config's 10,000
  images into memory).

Corruptions are named as in the release's files; TFDS's two different names
("elastic", "frosted_glass_blur") are translated (`TFDS_NAMES`).

`corruption_accuracy` evaluates any number of models (`name -> x -> logits`) on every
(corruption, severity): the data of Table 9, which compares ResNet-18 alone with
ResNet-18 behind the SR modules trained in isolation. The paper gives one number per
corruption and does not say how severities were combined; `table9_markdown` shows each
severity and their mean.
"""

import dataclasses
import logging
import os
import time
from typing import Callable, Iterator, NamedTuple, Optional, Protocol, Sequence, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from siriib_jax import config_errors, markdown
from siriib_jax.data import sources
from siriib_jax.data import specs
from siriib_jax.data.augment import to_float
from siriib_jax.data.splits import stratified_subset

SEVERITIES = specs.SEVERITIES
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
LABELS_FILE = "labels.npy"
RELEASE_URL = "https://zenodo.org/record/2535967/files/CIFAR-10-C.tar"
# TFDS's config name -> the release's file name, where they differ.
TFDS_NAMES = {"elastic": "elastic_transform", "frosted_glass_blur": "glass_blur"}
# The columns of the paper's Table 9, in its order: release name -> the paper's heading.
TABLE9_CORRUPTIONS = {
    "shot_noise": "ShotNoise", "gaussian_noise": "GaussianNoise",
    "impulse_noise": "ImpulseNoise", "motion_blur": "MotionBlur", "glass_blur": "GlassBlur",
    "defocus_blur": "DefocusBlur", "zoom_blur": "ZoomBlur",
    "jpeg_compression": "JPEGCompression", "elastic_transform": "ElasticTransform",
    "pixelate": "Pixelate", "fog": "Fog", "frost": "Frost",
}
# Table 9 of the paper (accuracy %, one number per corruption; CIFAR-10-C, adversarially
# trained models), for comparison in reports; not used by any computation here.
PAPER_TABLE9 = {
    "ResNet-18": dict(zip(TABLE9_CORRUPTIONS, (75.59, 75.17, 66.76, 67.97, 73.31, 71.22,
                                               73.94, 80.28, 75.38, 78.33, 28.03, 68.20))),
    "ResNet-18-SR": dict(zip(TABLE9_CORRUPTIONS, (77.60, 77.11, 68.67, 70.15, 74.25, 72.55,
                                                  75.35, 80.91, 75.97, 78.93, 30.33, 69.36))),
}
SUBSAMPLING = ("stratified", "first")


class CorruptionDataError(ValueError):
  """CIFAR-10-C files are missing or malformed; the message names the file and the fix."""


class CorruptionChunk(NamedTuple):
  """The images of one corruption at one severity.

  Attributes:
    corruption: the release's name, e.g. "gaussian_noise".
    severity: 1..5.
    images: uint8 (n, 32, 32, 3); for `ReleaseSource` without stratified subsampling a
      read-only `np.memmap` view (rows are read when used).
    labels: int32 (n,), aligned with `images`.
  """
  corruption: str
  severity: int
  images: np.ndarray
  labels: np.ndarray


class CorruptionSource(Protocol):
  """What `iterate_corruptions` reads: `ReleaseSource` or `TfdsSource`."""

  @property
  def corruptions(self) -> tuple[str, ...]:
    """The corruptions this source has (release names), sorted."""

  def read(self, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 32, 32, 3), possibly lazy; labels int32 (n,)) of one severity."""


def _release_error(path: str, what: str) -> CorruptionDataError:
  return CorruptionDataError(
      f"{path}: {what}. A CIFAR-10-C folder holds one <corruption>.npy per corruption, "
      f"uint8 (5·n, 32, 32, 3) with n images per severity 1–5 in that order, and "
      f"{LABELS_FILE}, integers (5·n,) in [0, {NUM_CLASSES}) — as in the release "
      f"({RELEASE_URL}; `tar -xf CIFAR-10-C.tar` and pass the folder CIFAR-10-C).")


def _open_npy(path: str) -> np.ndarray:
  """`np.load(path, mmap_mode='r')`, with a clear error when it is not a plain .npy."""
  try:
    return np.load(path, mmap_mode="r", allow_pickle=False)
  except (OSError, ValueError) as error:
    raise _release_error(path, f"it cannot be read as a .npy array "
                         f"({type(error).__name__}: {error})") from error


@dataclasses.dataclass
class ReleaseSource:
  """The CIFAR-10-C release folder, checked when opened, read lazily.

  Args:
    folder: the folder with `labels.npy` and `<corruption>.npy` files.
    corruptions: the corruptions to use (release names); None: every `.npy` in the folder
      except `labels.npy`.

  Raises:
    CorruptionDataError: the folder or `labels.npy` is missing, no corruption file is
      there, a requested corruption has no file, or a file's dtype or shape is wrong
      (images not uint8 (5·n, 32, 32, 3); labels not integers (5·n,) in [0, 10); a length
      not a multiple of 5, or differing between a corruption and the labels).
  """
  folder: str
  corruptions: Optional[Sequence[str]] = None

  def __post_init__(self):
    self.folder = os.fspath(self.folder)
    if not os.path.isdir(self.folder):
      raise _release_error(self.folder, "this folder does not exist")
    labels_path = os.path.join(self.folder, LABELS_FILE)
    if not os.path.isfile(labels_path):
      raise _release_error(self.folder, f"this folder has no {LABELS_FILE}")
    labels = _open_npy(labels_path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise _release_error(labels_path, f"the labels must be integers (5·n,), not "
                           f"{labels.dtype} {list(labels.shape)}")
    if not len(labels) or len(labels) % len(SEVERITIES):
      raise _release_error(labels_path, f"its length {len(labels)} is not a positive "
                           f"multiple of {len(SEVERITIES)} (n images per severity 1–5)")
    if not 0 <= labels.min() <= labels.max() < NUM_CLASSES:
      raise _release_error(labels_path, f"labels must lie in [0, {NUM_CLASSES}), not "
                           f"[{labels.min()}, {labels.max()}]")
    self._labels = np.asarray(labels, np.int32)
    self.per_severity = len(labels) // len(SEVERITIES)
    available = available_release_corruptions(self.folder)
    if not available:
      raise _release_error(self.folder, f"this folder has {LABELS_FILE} but no "
                           f"<corruption>.npy file")
    if self.corruptions is None:
      self.corruptions = available
    for name in self.corruptions:
      if name not in available:
        raise _release_error(
            os.path.join(self.folder, f"{name}.npy"),
            f"no such file; the folder has {list(available)}"
            f"{config_errors.did_you_mean(name, available)}")
    self.corruptions = tuple(self.corruptions)
    self._images = {}
    for name in self.corruptions:
      path = os.path.join(self.folder, f"{name}.npy")
      images = _open_npy(path)
      if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise _release_error(path, f"the images must be uint8 (5·n, 32, 32, 3), not "
                             f"{images.dtype} {list(images.shape)}")
      if len(images) != len(labels):
        raise _release_error(path, f"it has {len(images)} images but {LABELS_FILE} has "
                             f"{len(labels)} labels; both must be 5·n long")
      self._images[name] = images

  def read(self, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
    """Severity `severity`'s rows: images uint8 (n, 32, 32, 3) as a read-only memmap view
    (nothing read yet), labels int32 (n,)."""
    _check_severity(severity)
    rows = slice((severity - 1) * self.per_severity, severity * self.per_severity)
    return self._images[corruption][rows], self._labels[rows]


def available_release_corruptions(folder: str) -> tuple[str, ...]:
  """The corruptions of a CIFAR-10-C release folder: its `*.npy` files but `labels.npy`,
  sorted (names without `.npy`). Files are not checked here (`ReleaseSource` does)."""
  return tuple(sorted(name[:-len(".npy")] for name in os.listdir(folder)
                      if name.endswith(".npy") and name != LABELS_FILE))


def release_name(tfds_corruption: str) -> str:
  """The release's name of a TFDS `cifar10_corrupted` corruption (most are the same)."""
  return TFDS_NAMES.get(tfds_corruption, tfds_corruption)


def tfds_corruption(name: str) -> str:
  """TFDS's name of a corruption given by its release name (or already TFDS's)."""
  return {v: k for k, v in TFDS_NAMES.items()}.get(name, name)


@dataclasses.dataclass
class TfdsSource:
  """TFDS `cifar10_corrupted` through the project's TFDS reader (`data.load_split`).

  Args:
    dataset: a `config.dataset` block (`configs/default.py`); its `data_dir`, `download`
      and `download_timeout` are used, `name`, `corruption` and `severity` are set here.
    corruptions: release names (TFDS names are accepted too); None: all of TFDS's 19.

  Raises:
    ConfigError: a corruption TFDS does not have (at construction).
    DatasetNotFoundError: from `read`, when the config `<corruption>_<severity>` is not
      prepared under `dataset.data_dir` and is not downloaded (see `data/sources.py`).
  """
  dataset: ml_collections.ConfigDict
  corruptions: Optional[Sequence[str]] = None

  def __post_init__(self):
    if self.corruptions is None:
      self.corruptions = [release_name(c) for c in specs.corruptions()]
    self.corruptions = tuple(sorted(release_name(c) for c in self.corruptions))
    for name in self.corruptions:
      specs.validate_dataset_config(self._config(name, SEVERITIES[-1]), training=False)

  def _config(self, corruption: str, severity: int) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(self.dataset.to_dict())
    config.name = "cifar10_corrupted"
    config.image_size, config.num_classes = IMAGE_SHAPE[0], NUM_CLASSES
    config.corruption, config.severity = tfds_corruption(corruption), severity
    config.extra_npz, config.extra_fraction = "", 0.0
    return config

  def read(self, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
    """All images of TFDS config `<corruption>_<severity>` (uint8 (10000, 32, 32, 3) for
    the real data) and their labels int32, read into memory."""
    _check_severity(severity)
    split = sources.load_split(self._config(corruption, severity), "test")
    return split.image, split.label


def _check_severity(severity: int) -> None:
  if severity not in SEVERITIES:
    raise ValueError(f"severity {severity!r} is not valid: it must be one of {SEVERITIES}.")


def iterate_corruptions(source: CorruptionSource, *,
                        corruptions: Optional[Sequence[str]] = None,
                        severities: Sequence[int] = SEVERITIES,
                        max_per_severity: Optional[int] = None,
                        subsample: str = "stratified",
                        seed: int = 0) -> Iterator[CorruptionChunk]:
  """Yields one `CorruptionChunk` per corruption and severity, corruption-major.

  Args:
    source: a `ReleaseSource` or `TfdsSource`.
    corruptions: a subset of `source.corruptions`; None: all of them.
    severities: which of 1..5.
    max_per_severity: None or 0 for every image; else at most this many per
      (corruption, severity).
    subsample: how `max_per_severity` images are chosen: "stratified" (default) — the
      class proportions kept, drawn uniformly with `seed` (`data.stratified_subset`); as
      the draw depends only on the labels and the seed, every corruption and severity of
      the release (whose blocks share the same labels) gets the same test images —;
      "first" — the first `max_per_severity` of each severity.
    seed: fixes the stratified draw.

  Raises:
    ValueError: a bad `subsample`, `max_per_severity` or severity, or a corruption the
      source does not have.
  """
  if subsample not in SUBSAMPLING:
    raise ValueError(f"subsample = {subsample!r} is not valid: it must be one of "
                     f"{SUBSAMPLING}.")
  if max_per_severity is not None and (not isinstance(max_per_severity, int)
                                       or max_per_severity < 0):
    raise ValueError(f"max_per_severity = {max_per_severity!r} is not valid: it must be "
                     f"None or 0 (every image) or a positive integer.")
  for severity in severities:
    _check_severity(severity)
  names = source.corruptions if corruptions is None else tuple(corruptions)
  for name in names:
    if name not in source.corruptions:
      raise ValueError(f"corruption {name!r} is not in this source, which has "
                       f"{list(source.corruptions)}"
                       f"{config_errors.did_you_mean(name, source.corruptions)}.")
  for name in names:
    for severity in severities:
      images, labels = source.read(name, severity)
      if max_per_severity and max_per_severity < len(labels):
        if subsample == "first":
          images, labels = images[:max_per_severity], labels[:max_per_severity]
        else:
          index = stratified_subset(labels, max_per_severity, seed)
          images, labels = np.asarray(images[index]), labels[index]
      yield CorruptionChunk(name, severity, images, np.asarray(labels, np.int32))


@jax.jit
def _count_correct(predict_fn, images, labels, mask):
  """How many masked-in points of images uint8 (B, H, W, 3), labels (B,), mask bool (B,)
  `predict_fn` (a `Partial`: its arrays are arguments, not constants) classifies right."""
  logits = predict_fn(to_float(images))
  return jnp.sum((jnp.argmax(logits, axis=-1) == labels) & mask)


def corruption_accuracy(predict_fns: dict[str, Callable[[jax.Array], jax.Array]],
                        source: Union[CorruptionSource, str, os.PathLike],
                        batch_size: int, *,
                        corruptions: Optional[Sequence[str]] = None,
                        severities: Sequence[int] = SEVERITIES,
                        max_per_severity: Optional[int] = None,
                        subsample: str = "stratified",
                        seed: int = 0) -> dict:
  """Accuracy of each model per corruption and severity (the data of Table 9).

  Each model is jitted once: every batch has `batch_size` points, the last one of each
  (corruption, severity) padded with black images that a mask leaves out of the count, so
  no size but `batch_size` is ever compiled. Images reach the models as float32 in [0, 1].

  Args:
    predict_fns: model name -> function of x float32 (B, 32, 32, 3) in [0, 1] returning
      logits (B, num_classes); jittable (e.g. `models.logits_fn` of a trained state).
    source: a `ReleaseSource` or `TfdsSource`, or the path of a release folder.
    batch_size: points per model call.
    corruptions, severities, max_per_severity, subsample, seed: as `iterate_corruptions`.

  Returns:
    A dict (JSON-serialisable; severity keys are ints):
      "models": the names, in `predict_fns`' order; "corruptions"; "severities";
      "count": {corruption: {severity: points evaluated}};
      "correct": {model: {corruption: {severity: points classified correctly}}};
      "accuracy": {model: {corruption: {severity: accuracy %}}};
      "corruption_mean": {model: {corruption: mean over the severities of the accuracy %}};
      "mean": {model: mean of the accuracy % over every (corruption, severity)};
      "max_per_severity", "subsample", "seed": how the points were chosen;
      "seconds": wall time, compilation included.

  Raises:
    ValueError: an empty `predict_fns` or a non-positive `batch_size`; the errors of the
      source and of `iterate_corruptions`.
  """
  if not predict_fns:
    raise ValueError("predict_fns is empty: give at least one model, name -> x -> logits.")
  if not isinstance(batch_size, int) or batch_size <= 0:
    raise ValueError(f"batch_size = {batch_size!r} is not valid: it must be a positive "
                     f"integer.")
  if isinstance(source, (str, os.PathLike)):
    source = ReleaseSource(source)
  started = time.time()
  models = list(predict_fns)
  # A Partial is a pytree: a model's variables (`models.logits_fn`) stay jit arguments;
  # a plain function becomes a leafless Partial, compiled once per function.
  fns = {m: jax.tree_util.Partial(fn) for m, fn in predict_fns.items()}
  count, correct = {}, {m: {} for m in models}
  for chunk in iterate_corruptions(source, corruptions=corruptions, severities=severities,
                                   max_per_severity=max_per_severity, subsample=subsample,
                                   seed=seed):
    n = len(chunk.labels)
    hits = dict.fromkeys(models, 0)
    for start in range(0, n, batch_size):
      real = min(batch_size, n - start)
      images = np.zeros((batch_size,) + IMAGE_SHAPE, np.uint8)
      labels = np.zeros((batch_size,), np.int32)
      images[:real] = chunk.images[start:start + real]
      labels[:real] = chunk.labels[start:start + real]
      mask = np.arange(batch_size) < real
      images, labels, mask = jax.device_put((images, labels, mask))
      for m in models:
        hits[m] += _count_correct(fns[m], images, labels, mask)
    count.setdefault(chunk.corruption, {})[chunk.severity] = n
    for m in models:
      correct[m].setdefault(chunk.corruption, {})[chunk.severity] = int(hits[m])
    logging.info("CIFAR-10-C %s severity %d: %d points, %s", chunk.corruption,
                 chunk.severity, n, ", ".join(
                     f"{m} {100 * int(hits[m]) / max(n, 1):.2f}%" for m in models))
  accuracy = {m: {c: {s: 100.0 * correct[m][c][s] / count[c][s] if count[c][s] else
                      float("nan") for s in count[c]} for c in count} for m in models}
  return {
      "models": models,
      "corruptions": list(count),
      "severities": list(severities),
      "count": count,
      "correct": correct,
      "accuracy": accuracy,
      "corruption_mean": {m: {c: float(np.mean(list(accuracy[m][c].values())))
                              for c in count} for m in models},
      "mean": {m: float(np.mean([a for c in count for a in accuracy[m][c].values()]))
               for m in models},
      "max_per_severity": max_per_severity,
      "subsample": subsample,
      "seed": seed,
      "seconds": time.time() - started,
  }


def _row_order(corruptions: Sequence[str]) -> list[str]:
  """Table 9's corruptions in its order, then the others alphabetically."""
  known = [c for c in TABLE9_CORRUPTIONS if c in corruptions]
  return known + sorted(c for c in corruptions if c not in TABLE9_CORRUPTIONS)


def table9_markdown(result: dict, digits: int = 2) -> str:
  """`corruption_accuracy`'s result as one Markdown table.

  Rows: the corruptions (Table 9's twelve first, in the paper's order, then the others
  alphabetically), then "mean" (over the corruptions). Columns: for each model, its
  accuracy (%) at each severity and the mean over severities ("<model> mean", the number
  that plays the role of the paper's single column per corruption). A line under the
  table gives the points per severity.

  Args:
    result: the dict `corruption_accuracy` returns (or that dict read back from JSON,
      whose severity keys are strings).
    digits: decimals of the percentages (the paper's: 2).

  Returns:
    The table, ending with a newline.
  """
  models, severities = result["models"], [int(s) for s in result["severities"]]

  def cell(table: dict, severity: int) -> float:
    return table[severity] if severity in table else table[str(severity)]

  header = ["corruption"]
  for m in models:
    header += [f"{m} s{s}" for s in severities] + [f"{m} mean"]
  fmt = f"{{:.{digits}f}}"
  rows = []
  for c in _row_order(result["corruptions"]):
    row = [c]
    for m in models:
      row += [fmt.format(cell(result["accuracy"][m][c], s)) for s in severities]
      row.append(fmt.format(result["corruption_mean"][m][c]))
    rows.append(row)
  row = ["mean"]
  for m in models:
    row += [fmt.format(np.mean([cell(result["accuracy"][m][c], s)
                                for c in result["corruptions"]])) for s in severities]
    row.append(fmt.format(result["mean"][m]))
  rows.append(row)
  lines = [markdown.table(header, rows)]
  counts = sorted({int(n) for per in result["count"].values() for n in per.values()})
  how = ("every image" if not result.get("max_per_severity")
         else f"at most {result['max_per_severity']} ({result.get('subsample')})")
  lines.append("")
  lines.append(f"Points per corruption and severity: {', '.join(map(str, counts))} "
               f"({how}). Accuracy in %; s1–s5: severities.")
  return "\n".join(lines) + "\n"
