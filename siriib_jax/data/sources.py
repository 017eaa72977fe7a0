"""Reads one split of `config.dataset` into host memory.

TFDS datasets are read through `tfds.data_source` (ArrayRecord files, random
access, no TensorFlow needed), `name = "npz"` from `{data_dir}/{split}.npz`,
`cifar10_sample` from the package. See docs/data.md for why.
TFDS is imported only when a TFDS split is read, so that the model, attack and train-step
modules import without it (and without TensorFlow, which TFDS may pull in).
"""

import ml_collections
import numpy as np

from siriib_jax import config_errors
from siriib_jax.data import arrays
from siriib_jax.data import sample
from siriib_jax.data import specs


class DatasetNotFoundError(config_errors.ConfigError):
  """The dataset is not prepared under `config.dataset.data_dir`."""


def tfds_name(dataset: ml_collections.ConfigDict) -> str:
  """The TFDS name, with builder config, of `config.dataset` (e.g. "cifar10_corrupted/fog_3")."""
  if dataset.name == "cifar10_corrupted":
    return f"cifar10_corrupted/{dataset.corruption}_{dataset.severity}"
  return dataset.name


def prepare_command(dataset: ml_collections.ConfigDict) -> str:
  """The shell command that prepares `config.dataset` in ArrayRecord format."""
  data_dir = dataset.data_dir or "~/tensorflow_datasets"
  command = f"python -m siriib_jax.data.prepare {tfds_name(dataset)} --data_dir {data_dir}"
  if dataset.name == "tiny_imagenet":
    from siriib_jax.data import tiny_imagenet  # pylint: disable=g-import-not-at-top
    return command + f" --manual_dir DIR_WITH_{tiny_imagenet.ZIP_NAME}"
  return "pip install tensorflow-cpu && " + command


def load_split(dataset: ml_collections.ConfigDict, split: str) -> arrays.Arrays:
  """Reads `split` of `config.dataset` into memory.

  Args:
    dataset: `config.dataset`, already checked by `validate_dataset_config`.
    split: "train", or "test" for the dataset's evaluation split (Tiny-ImageNet:
      its official validation split).

  Returns:
    uint8 [N, S, S, 3] images and int32 [N] labels.

  Raises:
    DatasetNotFoundError: a TFDS dataset is not prepared under `dataset.data_dir`.
  """
  if dataset.name == "cifar10_sample":
    return sample.load(split)
  if dataset.name == "npz":
    return arrays.load_npz(specs.npz_path(dataset.data_dir, split), image_size=dataset.image_size,
                           num_classes=dataset.num_classes, key="dataset.data_dir")
  if split == "test":
    split = specs.DATASETS[dataset.name].test_split
  return _load_tfds(dataset, split)


def _load_tfds(dataset: ml_collections.ConfigDict, split: str) -> arrays.Arrays:
  """Decodes every example of a prepared TFDS split (ArrayRecord) into memory."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from siriib_jax.data import tiny_imagenet  # pylint: disable=g-import-not-at-top,unused-import  (registers the builder)
  name = tfds_name(dataset)
  builder = tfds.builder(name, data_dir=dataset.data_dir or None)
  if not builder.is_prepared():
    raise DatasetNotFoundError(
        f"TFDS dataset {name!r} is not prepared under config.dataset.data_dir = "
        f"{dataset.data_dir!r} (looked in {builder.data_dir}). Training never downloads. "
        f"Prepare it once, where it can be downloaded: `{prepare_command(dataset)}`, then "
        f"set --config.dataset.data_dir to that folder. To try the code offline, use "
        f"--config.dataset.name=cifar10_sample. See docs/data.md.")
  try:
    source = builder.as_data_source(split=split)
  except NotImplementedError as e:
    raise DatasetNotFoundError(
        f"TFDS dataset {name!r} under config.dataset.data_dir = {dataset.data_dir!r} is "
        f"prepared as TFRecord, which has no random access. Convert it once (needs "
        f"tensorflow-cpu): `tfds "
        f"convert_format --dataset_version_dir {builder.data_dir} --out_file_format "
        f"array_record`, or prepare it again: `{prepare_command(dataset)}`.") from e
  size = dataset.image_size
  image = np.empty((len(source), size, size, 3), np.uint8)
  label = np.empty((len(source),), np.int32)
  for i in range(len(source)):
    example = source[i]
    image[i], label[i] = example["image"], example["label"]
  return arrays.Arrays(image, label)
