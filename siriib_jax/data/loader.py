"""Per-host batches for training and evaluation.

The training order is a pure function of (seed, step): step `s` of epoch
`e = s // steps_per_epoch` takes the `s % steps_per_epoch`-th slice of
`epoch_permutation(seed, 0, e, N)`, and host `p` of `P` takes the `p`-th of `P`
equal parts of that slice. A run resumed at step `s` therefore sees exactly the
batches an uninterrupted run sees, and there is no iterator state to checkpoint.
Batches drop the remainder of each epoch.
"""

import functools
import itertools
from typing import Iterator, Optional

import jax
import ml_collections
import numpy as np

from siriib_jax import config_errors
from siriib_jax.data import arrays
from siriib_jax.data import sources
from siriib_jax.data import specs
from siriib_jax.data import splits

Batch = dict[str, np.ndarray]


class InputPipeline:
  """The data of `config.dataset` for this host.

  Training data are read when the pipeline is built (with `training=True`); the
  test split when it is first evaluated.

  Attributes:
    global_batch_size: training examples per step over all hosts.
    host_batch_size: training examples per batch on this host.
    process_index: this host, in [0, process_count).
    num_train_examples: training examples, extra data included; `train_batch`'s
      "index" lies in [0, num_train_examples) (extra data after the original).
    steps_per_epoch: training steps per pass over the training set (with extra
      data mixed in by fraction: per pass over the original training set).
    validation: the held-out training examples (`config.dataset.validation_size`,
      stratified, fixed by `config.dataset.validation_seed`), never trained on.
  """

  def __init__(self, dataset: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
               process_index: Optional[int] = None, process_count: Optional[int] = None,
               training: bool = True):
    """Checks the config and reads the training data.

    Args:
      dataset: `config.dataset`.
      global_batch_size: training examples per step over all hosts.
      seed: the data seed (non-negative): fixes the training order.
      process_index: this host; defaults to `jax.process_index()`.
      process_count: number of hosts; defaults to `jax.process_count()`.
      training: False to only evaluate (reads no training data; no validation split).

    Raises:
      ConfigError: a bad config value, or data missing or malformed.
    """
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    specs.validate_dataset_config(dataset, global_batch_size=global_batch_size,
                                  process_count=self.process_count, training=training)
    self._dataset = dataset
    self._seed = seed
    self.global_batch_size = global_batch_size
    self.host_batch_size = global_batch_size // self.process_count
    self.validation = arrays.Arrays(np.zeros((0,) + self.image_shape, np.uint8),
                                    np.zeros((0,), np.int32))
    self._streams = []
    self.num_train_examples = 0
    self._cached_epoch = {}
    if training:
      self._read_training_data()

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of every image."""
    return (self._dataset.image_size, self._dataset.image_size, 3)

  def _read_training_data(self) -> None:
    """Splits off the validation set and sets up the training streams."""
    dataset = self._dataset
    train = sources.load_split(dataset, "train")
    if dataset.validation_size >= len(train):
      config_errors.fail("dataset.validation_size", dataset.validation_size,
                         f"it must be smaller than the training set ({len(train)})")
    held_out = splits.stratified_subset(train.label, dataset.validation_size,
                                        seed=dataset.validation_seed)
    self.validation = train.take(held_out)
    train = train.take(np.setdiff1d(np.arange(len(train)), held_out))
    streams = [(train, self.host_batch_size)]
    if dataset.extra_npz:
      extra = arrays.load_npz(dataset.extra_npz, image_size=dataset.image_size,
                              num_classes=dataset.num_classes, key="dataset.extra_npz")
      if dataset.extra_fraction:
        extra_batch = round(self.host_batch_size * dataset.extra_fraction)
        streams = [(train, self.host_batch_size - extra_batch), (extra, extra_batch)]
      else:
        streams = [(arrays.concatenate(train, extra), self.host_batch_size)]
    for (data, host_batch), key in zip(streams, ("name", "extra_npz")):
      if len(data) < host_batch * self.process_count:
        config_errors.fail(f"dataset.{key}", dataset[key],
                           f"its {len(data)} training examples cannot fill one batch of "
                           f"{host_batch * self.process_count}")
    self._streams = streams
    self.num_train_examples = sum(len(data) for data, _ in streams)

  @property
  def steps_per_epoch(self) -> int:
    """Training steps per epoch of the (original) training set."""
    return self._steps_per_epoch(0)

  def _steps_per_epoch(self, stream: int) -> int:
    data, host_batch = self._streams[stream]
    return len(data) // (host_batch * self.process_count)

  def _permutation(self, stream: int, epoch: int) -> np.ndarray:
    """`epoch_permutation` of `stream`, cached for the current epoch."""
    if self._cached_epoch.get(stream, (None,))[0] != epoch:
      size = len(self._streams[stream][0])
      permutation = splits.epoch_permutation(self._seed, stream, epoch, size)
      self._cached_epoch[stream] = (epoch, permutation)
    return self._cached_epoch[stream][1]

  def train_batch(self, step: int) -> Batch:
    """This host's part of global training step `step`.

    Args:
      step: the global step, from 0.

    Returns:
      image uint8 [B_host, H, W, C], label int32 [B_host], and index int32
      [B_host]: which training example each is (fixed for the whole run).
    """
    if not self._streams:
      raise ValueError("This InputPipeline was built with training=False.")
    images, labels, example_indices = [], [], []
    offset = 0
    for stream, (data, host_batch) in enumerate(self._streams):
      epoch, position = divmod(step, self._steps_per_epoch(stream))
      start = (position * self.process_count + self.process_index) * host_batch
      indices = self._permutation(stream, epoch)[start:start + host_batch]
      images.append(data.image[indices])
      labels.append(data.label[indices])
      example_indices.append(indices + offset)
      offset += len(data)
    return {"image": np.concatenate(images), "label": np.concatenate(labels),
            "index": np.concatenate(example_indices).astype(np.int32)}

  def train_batches(self, start_step: int = 0) -> Iterator[Batch]:
    """Endless `train_batch(step)` for step = start_step, start_step + 1, ..."""
    return map(self.train_batch, itertools.count(start_step))

  @functools.cached_property
  def _test(self) -> arrays.Arrays:
    return sources.load_split(self._dataset, "test")

  def eval_data(self, split: str) -> arrays.Arrays:
    """All examples of `split`: "validation" (held out from training) or "test"."""
    if split not in ("validation", "test"):
      raise ValueError(f"Unknown eval split {split!r}: use 'validation' or 'test'.")
    return self._test if split == "test" else self.validation

  def eval_batches(self, split: str = "test", batch_size: Optional[int] = None,
                   subset_size: Optional[int] = None, subset_seed: int = 0) -> Iterator[Batch]:
    """This host's part of every example of `split`, once, in padded batches.

    Global batch `j` covers examples [j*B, (j+1)*B); host `p` gets its `p`-th
    part. Positions past the end are zero images with `mask` False, so every
    host yields the same number of equally shaped batches.

    Args:
      split: "validation" or "test".
      batch_size: global batch B, divisible by the host count; defaults to the
        training batch size.
      subset_size: evaluate only a random stratified subset of this size (the
        same on every host and call with the same `subset_seed`).
      subset_seed: fixes that subset.

    Yields:
      image uint8 [B_host, H, W, C], label int32 [B_host], mask bool [B_host].
    """
    data = self.eval_data(split)
    if subset_size is not None:
      data = data.take(splits.stratified_subset(data.label, subset_size, seed=subset_seed))
    batch_size = batch_size or self.global_batch_size
    if batch_size % self.process_count:
      raise ValueError(f"Eval batch size {batch_size} is not divisible by "
                       f"{self.process_count} hosts.")
    host_batch = batch_size // self.process_count
    for start in range(0, len(data), batch_size):
      positions = start + self.process_index * host_batch + np.arange(host_batch)
      mask = positions < len(data)
      indices = np.where(mask, positions, 0)
      image = np.where(mask[:, None, None, None], data.image[indices], np.uint8(0))
      label = np.where(mask, data.label[indices], 0).astype(np.int32)
      yield {"image": image, "label": label, "mask": mask}
