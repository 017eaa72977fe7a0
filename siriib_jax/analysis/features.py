"""The backbone's last feature map and its pooled (penultimate) features, captured from a
trained classifier without changing the model (Score-CAM, Fig. 7; t-SNE, Fig. 8).

Every backbone of `models/backbones.py` ends the same way: a last convolutional stage,
global average pooling, and the dense `head`. The map that is pooled is

* ResNet-18 (post-activation): the output of its last block `stage4_block1` (its blocks
  end in a ReLU);
* PreAct-ResNet-18 and WideResNet: ReLU of the output of `final_bn`, the BN-ReLU the
  pre-activation nets apply after their last stage.

`final_feature_maps` captures that map with flax's `capture_intermediates` (the outputs of
the backbone's direct submodules) and applies the rule above: ReLU(`final_bn`) when the
backbone has a `final_bn`, else the last `stage<s>_block<b>` in (s, b) order. Its spatial
mean is the head's input, the penultimate features (`penultimate_features`); the tests
check `head(features) == logits` for every backbone.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from siriib_jax.attacks.threat_model import check_images
from siriib_jax.evaluation.batching import map_batches

_BLOCK = re.compile(r"stage(\d+)_block(\d+)$")


def _direct_backbone_child(module: nn.Module, method_name: str) -> bool:
  path = module.path
  return method_name == "__call__" and len(path) == 2 and path[0] == "backbone"


def _final_map(captured: dict) -> jnp.ndarray:
  """The pooled map from `{child name: {'__call__': (output,)}}` of the backbone."""
  if "final_bn" in captured:
    return nn.relu(captured["final_bn"]["__call__"][0])
  blocks = [(tuple(int(g) for g in m.groups()), name)
            for name in captured if (m := _BLOCK.match(name))]
  if not blocks:
    raise ValueError(
        "cannot find the backbone's last convolutional stage: the model's `backbone` has "
        f"no `final_bn` and no `stage<s>_block<b>` submodule (it has {sorted(captured)})")
  return captured[max(blocks)[1]]["__call__"][0]


def _maps_and_logits(model: nn.Module, variables, x: jnp.ndarray):
  output, state = model.apply(variables, x, train=False,
                              capture_intermediates=_direct_backbone_child,
                              mutable=["intermediates"])
  if "backbone" not in state.get("intermediates", {}):
    raise ValueError("the model has no submodule called `backbone` (expected a "
                     "`models.Classifier` from `models.create_model`)")
  maps = _final_map(state["intermediates"]["backbone"]).astype(jnp.float32)
  logits = getattr(output, "logits", output).astype(jnp.float32)
  return maps, logits


@functools.partial(jax.jit, static_argnums=0)
def final_feature_maps(model: nn.Module, variables, x: jnp.ndarray):
  """The backbone's last feature map (the map its head pools) and the logits.

  Args:
    model: a `models.Classifier` (its backbone is the submodule `backbone`); static.
    variables: the model's variables (`params`, `batch_stats`); running statistics are used.
    x: (B, H, W, 3) images in [0, 1].

  Returns:
    maps: (B, h, w, C) float32, ≥ 0 (post-ReLU); h = H / 8 for the ResNets (stride 8 at
      their 4th stage), H / 4 for the WideResNets; C the last stage's width.
    logits: (B, K) float32, the model's output on x.

  Raises:
    ValueError: the model has no `backbone`, or the backbone has neither `final_bn` nor a
      `stage<s>_block<b>` submodule.
  """
  return _maps_and_logits(model, variables, x)


@functools.partial(jax.jit, static_argnums=0)
def _pooled(model, variables, x):
  maps, _ = _maps_and_logits(model, variables, x)
  return jnp.mean(maps, axis=(1, 2))


def penultimate_features(model: nn.Module, variables, images: np.ndarray,
                         batch_size: int = 256) -> np.ndarray:
  """The head's input — the spatial mean of `final_feature_maps` — for N images (Fig. 8).

  Runs in batches of `batch_size` (the last one padded, so one program is compiled).

  Args:
    model, variables: as `final_feature_maps`.
    images: (N, H, W, 3) float in [0, 1], or uint8 (`threat_model.check_images`:
      ValueError for values outside [0, 1] or not finite).
    batch_size: images per forward pass.

  Returns:
    (N, C) float32, C the backbone's last width (512 × width multiplier for ResNet-18,
    640 × width multiplier for WRN-28-10).
  """
  images = check_images(images, "images")
  return map_batches(lambda batch: _pooled(model, variables, batch), (images,), batch_size)
