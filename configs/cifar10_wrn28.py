"""WRN-28-10-SR, PGD-AT on CIFAR-10 (paper Table 5); `--config.model.siriib.variant=L|XL`
gives WRN-28-10-SR-L / -XL."""

from siriib_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.name = "wrn28_10"
  return config
