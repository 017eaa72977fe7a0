"""config_validation: the checks no factory owns (training keys, cross-block rules,
evaluation attack names by a pure parser)."""

import pytest

from siriib_jax.configs import default
from siriib_jax import config_validation
from siriib_jax.config_errors import ConfigError


def test_the_model_classes_must_be_the_datasets():
  config = default.get_config()
  config.model.num_classes = 100
  with pytest.raises(ConfigError, match=r"config\.model\.num_classes.*dataset\.num_classes"):
    config_validation.validate_cross_block_config(config)
  config.model.num_classes = config.dataset.num_classes
  config_validation.validate_cross_block_config(config)


@pytest.mark.parametrize("name", ["pgd-20", "autoattak", "l2-pgd", "cw"])
def test_an_unknown_evaluation_attack_is_named(name):
  config = default.get_config()
  config.evaluation.attacks = ("clean", name)
  with pytest.raises(ConfigError, match=rf"config\.evaluation\.attacks.*'{name}' is not an"):
    config_validation.validate_evaluation_config(config)


@pytest.mark.parametrize("name", ["adaptive", "pgd-20"])
def test_the_skip_ablation_takes_clean_and_single_attacks_only(name):
  config = default.get_config()
  config.evaluation.skip_ablation = ("clean", name)
  with pytest.raises(ConfigError, match=rf"evaluation\.skip_ablation.*'{name}' is not an"):
    config_validation.validate_evaluation_config(config)
  config.evaluation.skip_ablation = ("clean", "pgd10", "l2-pgd20")
  config_validation.validate_evaluation_config(config)


def test_evaluation_names_are_checked_without_building_an_attack(monkeypatch):
  from siriib_jax.attacks import registry  # pylint: disable=import-outside-toplevel

  def no_build(*args, **kwargs):
    raise AssertionError("an attack was built to check a name")

  monkeypatch.setattr(registry.ATTACKS, "_entries", {n: no_build for n in registry.ATTACKS})
  monkeypatch.setattr(registry, "pgd", no_build)
  config = default.get_config()
  config.evaluation.attacks = ("clean", "autoattack", "square", "l2-pgd20", "adaptive")
  config.final_eval_attacks = ("clean", "autoattack", "square")
  config_validation.validate_config(config)


def test_training_keys_are_checked_here():
  config = default.get_config()
  config.optimizer.momentum = 1.5
  with pytest.raises(ConfigError, match=r"config\.optimizer\.momentum.*\[0, 1\)"):
    config_validation.validate_config(config)
