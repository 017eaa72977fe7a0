"""Reads one split of `config.dataset` into host memory.

TFDS datasets are read through `tfds.data_source` (ArrayRecord files, random
access, no TensorFlow needed), `name = "npz"` from `{data_dir}/{split}.npz`,
`cifar10_sample` from the package. See docs/data.md for why.
TFDS is imported only when a TFDS split is read, so that the model, attack and train-step
modules import without it (and without TensorFlow, which TFDS may pull in).

A TFDS dataset that is not prepared under `config.dataset.data_dir` is downloaded and
prepared there (ArrayRecord) when `config.dataset.download` is True and its download host
answers a probe within `config.dataset.download_timeout` seconds; otherwise reading fails
at once with `DatasetNotFoundError`, naming the folder and the command that prepares it.
"""

import logging
import threading
import urllib.error
import urllib.request
from typing import Optional

import ml_collections
import numpy as np

from siriib_jax import config_errors
from siriib_jax.data import arrays
from siriib_jax.data import sample
from siriib_jax.data import specs


class DatasetNotFoundError(config_errors.ConfigError):
  """The dataset is not prepared under `config.dataset.data_dir`."""


# Where TFDS's builders fetch each downloadable dataset (the files its `_split_generators`
# download); the probe asks this URL. Tiny-ImageNet is prepared from a manually downloaded
# zip, so it has none.
DOWNLOAD_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    "cifar10_corrupted": "https://zenodo.org/record/2535967/files/CIFAR-10-C.tar",
}


def probe_url(url: str, timeout: float) -> Optional[str]:
  """Whether the network answers for `url`: None if an HTTP HEAD request got any response
  (any status) within `timeout` seconds, else why not (a short sentence).

  The request runs in a daemon thread that is abandoned after `timeout`, so that a DNS
  lookup (which socket timeouts do not bound) cannot stall the caller. HTTP(S) proxies from
  the environment are used, as TFDS's download would use them.
  """
  outcome = {}

  def ask():
    try:
      with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                  timeout=timeout):
        outcome["error"] = None
    except urllib.error.HTTPError:  # A status: the host answered.
      outcome["error"] = None
    except Exception as error:  # pylint: disable=broad-except
      outcome["error"] = f"{type(error).__name__}: {error}"

  thread = threading.Thread(target=ask, daemon=True, name="siriib-download-probe")
  thread.start()
  thread.join(timeout)
  if "error" not in outcome:
    return f"no answer within {timeout:g} s"
  return outcome["error"]


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
    DatasetNotFoundError: a TFDS dataset is not prepared under `dataset.data_dir` and could
      not be downloaded (`dataset.download` off, the network did not answer within
      `dataset.download_timeout` seconds, or preparing failed).
  """
  if dataset.name == "cifar10_sample":
    return sample.load(split)
  if dataset.name == "npz":
    return arrays.load_npz(specs.npz_path(dataset.data_dir, split), image_size=dataset.image_size,
                           num_classes=dataset.num_classes, key="dataset.data_dir")
  if split == "test":
    split = specs.DATASETS[dataset.name].test_split
  return _load_tfds(dataset, split)


def _not_prepared(dataset: ml_collections.ConfigDict, name: str, builder,
                  why: str) -> DatasetNotFoundError:
  return DatasetNotFoundError(
      f"TFDS dataset {name!r} is not prepared under config.dataset.data_dir = "
      f"{dataset.data_dir!r} (looked in {builder.data_dir}). {why} Prepare it once, where "
      f"it can be downloaded: `{prepare_command(dataset)}`, then set "
      f"--config.dataset.data_dir to that folder. To try the code offline, use "
      f"--config.dataset.name=cifar10_sample. See docs/data.md.")


def _download_or_fail(builder, dataset: ml_collections.ConfigDict, name: str) -> None:
  """Downloads and prepares `builder`'s dataset (ArrayRecord) under `dataset.data_dir`
  when `dataset.download` is on and the network answers; else raises the error that says
  how to prepare it. Raises `DatasetNotFoundError` also when preparing fails."""
  url = DOWNLOAD_URLS.get(dataset.name)
  if not dataset.download:
    raise _not_prepared(dataset, name, builder,
                        "Downloading is off (config.dataset.download=False).")
  if url is None:
    raise _not_prepared(dataset, name, builder,
                        f"{dataset.name!r} cannot be downloaded automatically.")
  unreachable = probe_url(url, dataset.download_timeout)
  if unreachable:
    raise _not_prepared(
        dataset, name, builder,
        f"It could not be downloaded: {url} did not answer ({unreachable}; "
        f"config.dataset.download_timeout = {dataset.download_timeout:g} s).")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  logging.warning("Downloading and preparing TFDS dataset %r into %s (once; "
                  "config.dataset.download=False turns this off).", name, builder.data_dir)
  try:
    builder.download_and_prepare(file_format="array_record",
                                 download_config=tfds.download.DownloadConfig())
  except ImportError as error:  # TFDS's CIFAR builders generate with TensorFlow.
    raise _not_prepared(dataset, name, builder,
                        f"Preparing it needs TensorFlow ({error}): `pip install "
                        f"tensorflow-cpu`.") from error
  except Exception as error:  # pylint: disable=broad-except
    raise _not_prepared(dataset, name, builder,
                        f"Downloading or preparing it failed ({type(error).__name__}: "
                        f"{error}).") from error


def _load_tfds(dataset: ml_collections.ConfigDict, split: str) -> arrays.Arrays:
  """Decodes every example of a prepared TFDS split (ArrayRecord) into memory."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from siriib_jax.data import tiny_imagenet  # pylint: disable=g-import-not-at-top,unused-import  (registers the builder)
  name = tfds_name(dataset)
  builder = tfds.builder(name, data_dir=dataset.data_dir or None)
  if not builder.is_prepared():
    _download_or_fail(builder, dataset, name)
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
