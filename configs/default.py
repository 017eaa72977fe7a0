"""Defaults shared by every experiment; each `configs/<dataset>_<backbone>.py` overrides them.

The values are the paper's (§5.1, SPEC §3–4): ResNet-18-SR, PGD-AT on CIFAR-10.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "cifar10"
  config.dataset.image_size = 32

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet18"
  config.model.num_classes = 10
  # Per-channel normalisation, applied inside the model (CIFAR-10 training statistics).
  config.model.mean = (0.4914, 0.4822, 0.4465)
  config.model.std = (0.2471, 0.2435, 0.2616)
  config.model.siriib = ml_collections.ConfigDict()
  config.model.siriib.enabled = True
  config.model.siriib.scales = (32, 24, 16, 8)
  config.model.siriib.num_skips = 3
  config.model.siriib.variant = "base"  # base | L | XL: the feature extractor c(·).
  config.model.siriib.orth_channels = 12
  config.model.siriib.fft_eps = 1e-8

  # L = L_ori + λ1 (L_svd + L_info) + λ2 R_τ (paper §4.2).
  config.loss = ml_collections.ConfigDict()
  config.loss.lambda1 = 20.0
  config.loss.lambda2 = 1e-4
  config.loss.svd_eps = 1e-6

  return config
