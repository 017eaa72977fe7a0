"""`siriib_jax.runs`: a run's kind and names, and opening it."""

import pytest

from siriib_jax import runs


@pytest.mark.parametrize("enabled, placement, variant, kind, paper, short, complexity", [
    (False, "plugin", "base", runs.BASELINE, "ResNet-18", "resnet18", "resnet18"),
    (True, "plugin", "base", runs.SIRIIB, "ResNet-18-SR", "resnet18-SR", "resnet18-SR(base)"),
    (True, "plugin", "L", runs.SIRIIB, "ResNet-18-SR-L", "resnet18-SR", "resnet18-SR(L)"),
    (True, "purifier", "base", runs.PURIFIER, "ResNet-18 + SR purifier", "resnet18-SR",
     "resnet18+SR-purifier"),
])
def test_kind_and_names_of_each_model(config, enabled, placement, variant, kind, paper, short,
                                      complexity):
  model = config.model
  model.siriib.enabled, model.siriib.placement, model.siriib.variant = (enabled, placement,
                                                                         variant)
  assert runs.kind(model) == kind
  assert runs.display_name(model) == paper
  assert runs.display_name(model, "short") == short
  assert runs.display_name(model, "complexity") == complexity
  with pytest.raises(ValueError, match="style"):
    runs.display_name(model, "long")


def test_weights_name_follows_the_averaging_decay(config):
  assert runs.weights_name(config) == "raw" and not runs.averaging_enabled(config)
  config.weight_averaging.decay = 0.995
  assert runs.weights_name(config) == "averaged" and runs.averaging_enabled(config)


def test_open_run_without_a_checkpoint_names_the_workdir(config, tmp_path):
  from siriib_jax.checkpointing import CheckpointError  # pylint: disable=import-outside-toplevel
  config.model.width_multiplier = 0.125
  with pytest.raises(CheckpointError, match="No checkpoint"):
    runs.open_run(str(tmp_path / "never"), config)
