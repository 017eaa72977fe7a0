"""Tests of siriib_jax.data.splits: the stratified subset."""

import numpy as np

from siriib_jax import data


def test_stratified_subset():
  labels = np.repeat(np.arange(4), [400, 300, 200, 100])  # Sorted by class, unbalanced.
  subset = data.stratified_subset(labels, 100, seed=3)
  assert len(set(subset)) == 100 and list(subset) == sorted(subset)
  assert list(np.bincount(labels[subset])) == [40, 30, 20, 10]
  assert np.array_equal(subset, data.stratified_subset(labels, 100, seed=3))
  assert not np.array_equal(subset, data.stratified_subset(labels, 100, seed=4))
  odd = data.stratified_subset(labels, 7, seed=0)  # 2.8, 2.1, 1.4, 0.7 by largest remainder.
  assert list(np.bincount(labels[odd], minlength=4)) == [3, 2, 1, 1]
