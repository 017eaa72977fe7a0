"""The embedded CIFAR-10 sample (`config.dataset.name = "cifar10_sample"`).

A stratified random sample of real CIFAR-10, shipped in `sample/` so the code can be
tried without any download: 3,000 training images (300 per class) and 1,000 test
images (100 per class). Pixels are lossless WebP mosaics (smaller than `.npz`),
labels an `.npz`. `tools/make_sample.py` regenerates the files.
"""

import pathlib

import numpy as np
from PIL import Image

from siriib_jax.data import arrays

SAMPLE_DIR = pathlib.Path(__file__).resolve().parent / "sample"
LABELS_FILE = "cifar10_sample_labels.npz"
MOSAIC_COLUMNS = 50


def mosaic_file(split: str) -> str:
  """The file name of the mosaic of `split` ("train" or "test")."""
  return f"cifar10_sample_{split}.webp"


def to_mosaic(images: np.ndarray) -> np.ndarray:
  """Tiles uint8 [N, S, S, C] images, N a multiple of 50, row-major into [N/50*S, 50*S, C]."""
  n, s, _, c = images.shape
  rows = n // MOSAIC_COLUMNS
  tiles = images.reshape(rows, MOSAIC_COLUMNS, s, s, c).transpose(0, 2, 1, 3, 4)
  return tiles.reshape(rows * s, MOSAIC_COLUMNS * s, c)


def from_mosaic(mosaic: np.ndarray, size: int) -> np.ndarray:
  """Inverse of `to_mosaic`: [R*S, 50*S, C] -> [R*50, S, S, C] with S = `size`."""
  rows, columns = mosaic.shape[0] // size, mosaic.shape[1] // size
  tiles = mosaic.reshape(rows, size, columns, size, -1).transpose(0, 2, 1, 3, 4)
  return tiles.reshape(rows * columns, size, size, -1)


def load(split: str) -> arrays.Arrays:
  """Loads `split` ("train" or "test") of the embedded sample: uint8 [N, 32, 32, 3], int32 [N]."""
  with Image.open(SAMPLE_DIR / mosaic_file(split)) as image:
    mosaic = np.asarray(image.convert("RGB"))
  with np.load(SAMPLE_DIR / LABELS_FILE) as labels:
    label = labels[split].astype(np.int32)
  return arrays.Arrays(from_mosaic(mosaic, 32), label)
