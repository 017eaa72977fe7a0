"""analysis/features: the captured last feature map is the one the head pools, for every
backbone family, with and without SiRIIB."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax.analysis.features import final_feature_maps, penultimate_features
from tests.helpers import tiny_model


@pytest.mark.parametrize("name,siriib,stride", [("resnet18", True, 8),
                                                ("preact_resnet18", False, 8),
                                                ("wrn28_10", True, 4)])
def test_the_head_of_the_pooled_map_gives_the_logits(name, siriib, stride):
  model, variables = tiny_model(name, siriib=siriib)
  x = jax.random.uniform(jax.random.key(1), (3, 16, 16, 3))
  maps, logits = final_feature_maps(model, variables, x)
  width = model.backbone.widths[-1]
  assert maps.shape == (3, 16 // stride, 16 // stride, width)
  assert float(maps.min()) >= 0.0  # Post-ReLU activations.
  head = variables["params"]["backbone"]["head"]
  pooled = jnp.mean(maps, axis=(1, 2))
  np.testing.assert_allclose(pooled @ head["kernel"] + head["bias"], logits, atol=1e-4)
  # penultimate_features: the same pooled map, in batches whose last one is padded.
  features = penultimate_features(model, variables, np.asarray(x), batch_size=2)
  assert features.shape == (3, width) and features.dtype == np.float32
  np.testing.assert_allclose(features, pooled, atol=1e-5)


def test_a_model_without_a_backbone_is_refused():
  class NoBackbone(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(2)(x.reshape(x.shape[0], -1))

  model = NoBackbone()
  x = jnp.zeros((1, 4, 4, 3))
  variables = model.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="backbone"):
    final_feature_maps(model, variables, x)
