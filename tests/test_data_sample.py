"""Tests of siriib_jax.data.sample: the CIFAR-10 sample shipped in the package."""

import importlib.util

import numpy as np
import pytest

from siriib_jax.data import sample
from tests.data_helpers import SHARED_DATA


def test_embedded_sample_is_small_balanced_and_loads():
  files = list(sample.SAMPLE_DIR.iterdir())
  assert sum(f.stat().st_size for f in files) <= 8 * 2**20
  train, test = sample.load("train"), sample.load("test")
  assert train.image.shape == (3000, 32, 32, 3) and train.image.dtype == np.uint8
  assert list(np.bincount(train.label)) == [300] * 10
  assert list(np.bincount(test.label)) == [100] * 10
  assert not (np.diff(test.label) >= 0).all()  # Stored shuffled, not sorted by class.
  assert 0.4 < train.image.mean() / 255 < 0.55 and train.image.std() > 40


@pytest.mark.skipif(not (SHARED_DATA / "cifar.py").exists(), reason="../shared/data is absent")
@pytest.mark.parametrize("split", ["train", "test"])
def test_embedded_sample_is_real_cifar10(split):
  spec = importlib.util.spec_from_file_location("cifar", SHARED_DATA / "cifar.py")
  cifar = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cifar)
  image, label = cifar.load("cifar10", split)
  index = {bytes(x): y for x, y in zip(image, label)}
  embedded = sample.load(split)
  assert [index.get(bytes(x)) for x in embedded.image] == list(embedded.label)
