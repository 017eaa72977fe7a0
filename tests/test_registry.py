"""registry: the one lookup idiom, and the four registries built on it."""

import pytest

from siriib_jax.attacks.registry import ATTACKS
from siriib_jax.config_errors import ConfigError
from siriib_jax.data.specs import DATASETS
from siriib_jax.models.backbones import BACKBONES
from siriib_jax.registry import Registry
from siriib_jax.training.strategies import STRATEGIES


def test_lookup_returns_the_entry_and_names_the_closest_on_a_typo():
  registry = Registry("model.name", {"resnet18": 1, "wrn28_10": 2})
  assert registry.lookup("wrn28_10") == 2
  assert sorted(registry) == ["resnet18", "wrn28_10"] and "resnet18" in registry
  with pytest.raises(ConfigError, match=r"config\.model\.name = 'resnet-18'.*did you mean "
                                        r"'resnet18'.*--config\.model\.name="):
    registry.lookup("resnet-18")


def test_a_registry_shared_by_several_keys_names_what_it_holds():
  registry = Registry("attack", {"square": 1}, config_key=False)
  with pytest.raises(ConfigError, match=r"unknown attack 'sqare'.*pgd<N>.*did you mean "
                                        r"'square'"):
    registry.lookup("sqare", extra="pgd<N>")


def test_the_four_registries_use_the_one_idiom():
  for registry in (ATTACKS, BACKBONES, DATASETS, STRATEGIES):
    assert isinstance(registry, Registry) and len(registry) >= 4
