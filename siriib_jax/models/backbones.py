"""The backbone registry: `config.model.name` → a Flax module factory
`(num_classes, width_multiplier, dtype) -> backbone` (contract: `skip_targets.py`)."""

import functools

from siriib_jax.models.resnet import ResNet18
from siriib_jax.models.wide_resnet import WideResNet
from siriib_jax.registry import Registry

BACKBONES = Registry("model.name", {
    "resnet18": functools.partial(ResNet18, preact=False),
    "preact_resnet18": functools.partial(ResNet18, preact=True),
    "wrn28_10": functools.partial(WideResNet, depth=28, widen_factor=10),
    "wrn34_10": functools.partial(WideResNet, depth=34, widen_factor=10),
})
