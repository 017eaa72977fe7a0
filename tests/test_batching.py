"""evaluation/batching: the stratified, seeded subset of test points."""

import numpy as np

from siriib_jax.data import InputPipeline
from siriib_jax.evaluation import select_points


def test_subset_is_stratified_and_fixed_by_seed(config):
  config.dataset.name = "cifar10_sample"
  data = InputPipeline(config.dataset, global_batch_size=64, seed=0, training=False)
  all_labels = select_points(data)[1]
  images, labels = select_points(data, 100, seed=3)
  again = select_points(data, 100, seed=3)
  other = select_points(data, 100, seed=4)
  assert len(labels) == 100 and images.dtype == np.uint8
  assert np.array_equal(images, again[0]) and np.array_equal(labels, again[1])
  assert not np.array_equal(images, other[0])
  expected = 100 * np.bincount(all_labels) / len(all_labels)
  assert np.all(np.abs(np.bincount(labels, minlength=10) - expected) < 1)
