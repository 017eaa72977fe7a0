"""Tests of siriib_jax.data's dataset registry and the checks of `config.dataset`."""

import pytest

from siriib_jax import config_errors
from siriib_jax import data
from tests.data_helpers import dataset_config


@pytest.mark.parametrize("overrides, kwargs, pattern", [
    (dict(name="imagenet"), {}, r"dataset\.name.*one of"),
    (dict(image_size=64), {}, r"dataset\.image_size.*32"),
    (dict(num_classes=0), {}, r"dataset\.num_classes.*positive"),
    (dict(validation_size=-1), {}, r"dataset\.validation_size"),
    (dict(validation_size=5), {}, r"dataset\.validation_size.*per class"),
    (dict(extra_npz="/no/such.npz"), {}, r"dataset\.extra_npz.*existing"),
    (dict(extra_fraction=0.5), {}, r"dataset\.extra_fraction.*extra_npz"),
    (dict(name="npz", data_dir="/no/such"), {}, r"dataset\.data_dir.*train\.npz"),
    (dict(name="cifar10_corrupted", corruption="rain"), dict(training=False),
     r"dataset\.corruption.*gaussian_noise"),
    (dict(name="cifar10_corrupted", severity=6), dict(training=False), r"dataset\.severity"),
    (dict(name="cifar10_corrupted"), {}, r"dataset\.name.*evaluation only"),
    ({}, dict(global_batch_size=100, process_count=8), r"config\.batch_size.*8"),
])
def test_validate_dataset_config_rejects(overrides, kwargs, pattern):
  with pytest.raises(config_errors.ConfigError, match=pattern):
    data.validate_dataset_config(dataset_config(**overrides), **kwargs)


def test_validate_dataset_config_accepts_defaults():
  data.validate_dataset_config(dataset_config(), global_batch_size=128, process_count=4)
  data.validate_dataset_config(dataset_config(name="cifar10_corrupted", corruption="fog",
                                              severity=3), training=False)


@pytest.mark.parametrize("overrides, pattern", [
    (dict(download="yes"), r"dataset\.download .*True"),
    (dict(download_timeout=0.0), r"dataset\.download_timeout .*\(0, 300\]"),
    (dict(download_timeout=1e4), r"dataset\.download_timeout"),
])
def test_download_keys_are_checked(overrides, pattern):
  import ml_collections  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict({**dataset_config().to_dict(), **overrides})
  with pytest.raises(config_errors.ConfigError, match=pattern):
    data.validate_dataset_config(config, training=False)
