"""Helpers shared by the tests: tiny training configs and datasets written on the fly.

Fixtures live in `conftest.py`; plain functions live here and are imported as
`from tests.helpers import ...`.
"""

import os

from configs import default


def tiny_training_config(data_dir: str):
  """A config whose step compiles quickly: ResNet-18 × 1/8, two SiRIIB scales, a 1-step
  rolled attack, batch 8, on the `npz` dataset in `data_dir` (see `write_npz_dataset`)."""
  config = default.get_config()
  config.dataset.name = "npz"
  config.dataset.data_dir = data_dir
  config.dataset.validation_size = 10
  config.model.width_multiplier = 0.125
  config.model.siriib.scales = (32, 16)
  config.attack.steps = 1
  config.attack.unroll = False
  config.eval_pgd_steps = 1
  config.batch_size = 8
  config.num_epochs = 2
  config.log_every_steps = 1
  return config


def write_npz_dataset(directory, num_train: int = 34, num_test: int = 16, seed: int = 0):
  """Random 32×32 images with 10 balanced labels, as `{directory}/{train,test}.npz`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  for split, n in (("train", num_train), ("test", num_test)):
    np.savez(os.path.join(directory, f"{split}.npz"),
             image=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
             label=np.arange(n) % 10)
  return str(directory)


def register_prepared_cifar10(data_dir) -> None:
  """Writes cifar10's metadata under `data_dir` so that it counts as prepared; with
  `tfds.testing.mock_data(policy=USE_FILES, data_dir=...)` its examples are then mocked."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder("cifar10", data_dir=data_dir)
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0)
      for s, n in (("train", 50000), ("test", 10000))]))
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)
