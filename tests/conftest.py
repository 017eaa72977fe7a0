"""Shared test fixtures: the default config and small helpers."""

import os
import sys

import jax
import pytest

# The repository root holds `configs/`, which tests import like main.py does.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default  # noqa: E402  pylint: disable=wrong-import-position
from siriib_jax.runtime import configure_process  # noqa: E402

# As main.py runs; before the first computation initialises the backend.
configure_process()
# The tests compile many small programs and run each for moments: XLA:CPU's LLVM code
# generation is most of their time (the tiny train step: 32 of 40 s). Its cheapest
# optimisation level compiles that step in 27 s instead of 43 s and runs it in 0.2 s
# instead of 0.1 s. Only the tests use it (main.py and the benchmarks do not); it changes
# how fast the code runs, not what it computes.
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                    "--xla_backend_optimization_level=0",
                                    "--xla_llvm_disable_expensive_passes=true"]).strip()


# Tests build the same small steps again and again (each `train_and_evaluate` jits anew):
# a persistent compilation cache lets XLA compile each of them once per session.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.environ.get("TMPDIR", "/tmp"), "siriib_jax_test_xla_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def config():
  return default.get_config()


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
