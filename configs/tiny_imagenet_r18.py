"""ResNet-18-SR, FGSM-AT on Tiny-ImageNet, ε = 2/255, scales 64/48/24/16 (paper App. C.1).

Tiny-ImageNet is read from the official zip in TFDS's manual dir (docs/data.md)."""

from siriib_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = "tiny_imagenet"
  config.dataset.image_size = 64
  config.dataset.num_classes = 200
  config.model.num_classes = 200
  # ImageNet statistics, as is usual for Tiny-ImageNet.
  config.model.mean = (0.485, 0.456, 0.406)
  config.model.std = (0.229, 0.224, 0.225)
  config.model.siriib.scales = (64, 48, 24, 16)
  config.strategy = "fgsm_at"
  config.attack.eps = 2 / 255
  config.attack.step_size = 0.5 / 255
  return config
