"""Builders shared by the tests of siriib_jax.data (`tests/test_data_*.py`)."""

import pathlib

import numpy as np

from siriib_jax import data
from siriib_jax.configs import default

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def dataset_config(**overrides):
  config = default.get_config().dataset
  config.update(overrides)
  return config


def identifiable(n, num_classes=10, marker=0, seed=0):
  """n images whose pixel (0, 0) encodes (index, marker); labels cycle over classes, shuffled."""
  image = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  image[:, 0, 0, 0], image[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
  image[:, 0, 0, 2] = marker
  label = np.random.default_rng(seed + 1).permutation(np.arange(n) % num_classes)
  return image, label


def ids(images):
  return images[:, 0, 0, 0].astype(np.int64) + 256 * images[:, 0, 0, 1].astype(np.int64)


def npz_pipeline(npz_dir, batch=40, seed=0, process_index=0, process_count=1, **overrides):
  config = dataset_config(name="npz", data_dir=str(npz_dir), validation_size=100, **overrides)
  return data.InputPipeline(config, global_batch_size=batch, seed=seed,
                            process_index=process_index, process_count=process_count)
