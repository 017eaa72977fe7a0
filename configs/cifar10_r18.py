"""The paper's main setting: ResNet-18-SR, PGD-AT on CIFAR-10 (§5.1, SPEC §4)."""

from siriib_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.name = "resnet18"
  return config
