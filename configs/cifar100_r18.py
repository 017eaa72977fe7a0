"""ResNet-18-SR, PGD-AT on CIFAR-100 (paper Fig. 6)."""

from siriib_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = "cifar100"
  config.dataset.num_classes = 100
  config.model.num_classes = 100
  # CIFAR-100 training statistics.
  config.model.mean = (0.5071, 0.4865, 0.4409)
  config.model.std = (0.2673, 0.2564, 0.2762)
  return config
