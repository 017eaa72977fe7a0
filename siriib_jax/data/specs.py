"""The datasets the loader knows, and the check of `config.dataset` before anything runs."""

import dataclasses
import os
from typing import Optional

import ml_collections

from siriib_jax import config_errors
from siriib_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the loader needs to know about one `config.dataset.name`.

  Attributes:
    image_size: height = width of the images; None: taken from the config (npz).
    num_classes: number of labels; None: taken from the config (npz).
    test_split: the split `eval_batches("test")` reads (Tiny-ImageNet's official
      test labels are not public, so its `validation` split plays that role).
    trainable: False for evaluation-only datasets.
  """
  image_size: Optional[int]
  num_classes: Optional[int]
  test_split: str = "test"
  trainable: bool = True


DATASETS = Registry("dataset.name", {
    "cifar10": DatasetSpec(32, 10),
    "cifar100": DatasetSpec(32, 100),
    "cifar10_corrupted": DatasetSpec(32, 10, trainable=False),
    "tiny_imagenet": DatasetSpec(64, 200, test_split="validation"),
    "cifar10_sample": DatasetSpec(32, 10),
    "npz": DatasetSpec(None, None),
})
TFDS_NAMES = ("cifar10", "cifar100", "cifar10_corrupted", "tiny_imagenet")
SEVERITIES = (1, 2, 3, 4, 5)


def corruptions() -> list[str]:
  """The corruption types of TFDS's `cifar10_corrupted` (e.g. "gaussian_noise")."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  configs = tfds.builder_cls("cifar10_corrupted").BUILDER_CONFIGS
  return sorted({c.name.rsplit("_", 1)[0] for c in configs})


def npz_path(data_dir: str, split: str) -> str:
  """Where `name = "npz"` reads `split` ("train" or "test") from."""
  return os.path.join(data_dir, f"{split}.npz")


def validate_dataset_config(dataset: ml_collections.ConfigDict, *,
                            global_batch_size: Optional[int] = None,
                            batch_size_key: str = "batch_size",
                            process_count: Optional[int] = None,
                            training: bool = True) -> None:
  """Checks `config.dataset` cheaply, before any data is read or code compiled.

  Args:
    dataset: `config.dataset` (keys documented in `configs/default.py`).
    global_batch_size: the training batch over all hosts, if it should be checked.
    batch_size_key: the config key of `global_batch_size`, for the error message.
    process_count: number of hosts; defaults to `jax.process_count()`.
    training: whether the dataset will be trained on (not only evaluated).

  Raises:
    ConfigError: naming the first bad key, its value and what is allowed.
  """
  spec = DATASETS.lookup(dataset.name)
  for key in ("image_size", "num_classes"):
    value = dataset[key]
    if not isinstance(value, int) or value <= 0:
      config_errors.fail(f"dataset.{key}", value, "it must be a positive integer")
    if getattr(spec, key) not in (None, value):
      config_errors.fail(f"dataset.{key}", value,
                         f"dataset {dataset.name!r} has {key} {getattr(spec, key)}")
  if training and not spec.trainable:
    config_errors.fail("dataset.name", dataset.name,
                       "it is for evaluation only; train on "
                       f"{[n for n, s in DATASETS.items() if s.trainable]}")
  if dataset.name == "npz":
    for split in ("train", "test"):
      if not os.path.isfile(npz_path(dataset.data_dir, split)):
        config_errors.fail("dataset.data_dir", dataset.data_dir,
                           f"with name='npz' it must be a folder holding train.npz and "
                           f"test.npz (arrays image uint8 NHWC, label int); "
                           f"{npz_path(dataset.data_dir, split)} does not exist")
  if not isinstance(dataset.download, bool):
    config_errors.fail("dataset.download", dataset.download,
                       "it must be True (download and prepare a TFDS dataset that is not "
                       "prepared, where the network answers) or False (never download)")
  timeout = dataset.download_timeout
  if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
      or not 0 < timeout <= 300):
    config_errors.fail("dataset.download_timeout", timeout,
                       "it must be a number of seconds in (0, 300]: how long the network "
                       "probe waits before a run without prepared data stops")
  if dataset.name == "cifar10_corrupted":
    config_errors.check_choice("dataset.corruption", dataset.corruption, corruptions())
    config_errors.check_choice("dataset.severity", dataset.severity, SEVERITIES)
  size = dataset.validation_size
  if not isinstance(size, int) or size < 0:
    config_errors.fail("dataset.validation_size", size,
                       "it must be an integer >= 0 (0: no held-out validation split)")
  if size and size < dataset.num_classes:
    config_errors.fail("dataset.validation_size", size,
                       f"a stratified split needs at least one example per class "
                       f"({dataset.num_classes}), or 0 for none")
  if dataset.extra_npz and not os.path.isfile(dataset.extra_npz):
    config_errors.fail("dataset.extra_npz", dataset.extra_npz,
                       "it must be '' or an existing .npz file with arrays image and label")
  if not 0.0 <= dataset.extra_fraction < 1.0:
    config_errors.fail("dataset.extra_fraction", dataset.extra_fraction,
                       "it must be in [0, 1): the share of each training batch drawn from "
                       "extra_npz, or 0 to concatenate extra_npz to the training set")
  if dataset.extra_fraction and not dataset.extra_npz:
    config_errors.fail("dataset.extra_fraction", dataset.extra_fraction,
                       "it must be 0 when config.dataset.extra_npz is ''")
  if global_batch_size is not None:
    if process_count is None:
      import jax  # pylint: disable=g-import-not-at-top
      process_count = jax.process_count()
    if not isinstance(global_batch_size, int) or global_batch_size <= 0:
      config_errors.fail(batch_size_key, global_batch_size, "it must be a positive integer")
    if global_batch_size % process_count:
      config_errors.fail(batch_size_key, global_batch_size,
                         f"it must be divisible by the number of hosts ({process_count})")
    if dataset.extra_fraction:
      host_batch = global_batch_size // process_count
      if not 0 < round(host_batch * dataset.extra_fraction) < host_batch:
        config_errors.fail("dataset.extra_fraction", dataset.extra_fraction,
                           f"with {host_batch} examples per host and batch, both the "
                           f"original and the extra data must get at least one")
