"""models/classifier: the model family's invariants — x_avg, the IB skips, jit, the checks
of `create_model` (SPEC §2)."""

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax.config_errors import ConfigError
from siriib_jax.models import BACKBONES, create_model
from siriib_jax.models.siriib import ORTHOGONAL_MODULE, PooledConv


def _init(model, size, batch=2, seed=0):
  x = jax.random.uniform(jax.random.key(seed), (batch, size, size, 3))
  return x, model.init(jax.random.key(1), x)


@pytest.mark.parametrize("size,scales", [(32, (32, 24, 16, 8)), (64, (64, 48, 24, 16))])
def test_x_avg_lies_in_the_open_unit_interval_with_the_input_shape(config, size, scales):
  config.model.siriib.scales = scales
  model = create_model(config.model, size)
  x, variables = _init(model, size)
  out = model.apply(variables, x)
  chex.assert_shape(out.x_avg, x.shape)
  assert float(out.x_avg.min()) > 0.0 and float(out.x_avg.max()) < 1.0
  assert out.logits.shape == (2, 10)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_zero_projections_give_the_plain_backbone_logits(config, name):
  size = 16
  config.model.name = name
  config.model.siriib.scales = (16, 8)
  with_siriib = create_model(config.model, size)
  config.model.siriib.enabled = False
  plain = create_model(config.model, size)
  x, variables = _init(with_siriib, size, seed=3)

  params = flax.core.unfreeze(variables["params"])
  plain_variables = {"params": {"backbone": params["backbone"]},
                     "batch_stats": {"backbone": variables["batch_stats"]["backbone"]}}
  # With the random p_i the skips change the logits...
  out = with_siriib.apply(variables, x)
  reference = plain.apply(plain_variables, x).logits
  assert not np.allclose(out.logits, reference, atol=1e-4)
  # ...and with p_i = 0 they are the plain backbone's, in eval and in train mode.
  for i in range(3):
    projection = params["siriib"][f"projection{i}"]
    params["siriib"][f"projection{i}"] = jax.tree.map(jnp.zeros_like, projection)
  zeroed = {"params": params, "batch_stats": variables["batch_stats"]}
  np.testing.assert_allclose(with_siriib.apply(zeroed, x).logits, reference, atol=1e-5)
  train_out, _ = with_siriib.apply(zeroed, x, train=True, mutable=["batch_stats"])
  train_ref, _ = plain.apply(plain_variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(train_out.logits, train_ref.logits, atol=1e-5)


@pytest.mark.parametrize("num_skips", [1, 2, 3])
def test_features_follow_the_skip_targets(config, num_skips):
  config.model.siriib.num_skips = num_skips
  model = create_model(config.model, 32)
  x, variables = _init(model, 32)
  features = model.apply(variables, x).features
  expected = [(2, 32, 32, 64), (2, 32, 32, 64), (2, 16, 16, 128)][:num_skips]
  assert [f.shape for f in features] == expected


@pytest.mark.parametrize("variant,extractor", [("base", (4, 8, 16)), ("L", (4, 16, 16))])
def test_width_multiplier_narrows_siriib_with_the_backbone(config, variant, extractor):
  """× 1/4: c(·)'s 16/32/64 (base) or its 16-channel stem and the stage-1 width (L) become
  4/8/16, and every f_i still matches its (narrowed) skip target."""
  config.model.width_multiplier = 0.25
  config.model.siriib.variant = variant
  config.model.siriib.scales = (8,)
  model = create_model(config.model, 8)
  x, variables = _init(model, 8)
  params = variables["params"]["siriib"]["extractor"]
  widths = [leaf.shape[-1] for path, leaf in flax.traverse_util.flatten_dict(params).items()
            if path[-1] == "kernel"]
  assert (widths[0], widths[1], widths[-1]) == extractor
  shapes = [f.shape[-1] for f in model.apply(variables, x).features]
  assert shapes == [t.channels for t in model.backbone.skip_targets] == [16, 16, 32]

def test_jit_matches_eager_and_does_not_retrace(config):
  config.model.siriib.scales = (16, 8)
  model = create_model(config.model, 16)
  x, variables = _init(model, 16)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(variables, x):
    return model.apply(variables, x)

  eager = model.apply(variables, x)
  jitted = forward(variables, x)
  chex.assert_trees_all_close(jitted, eager, atol=1e-5)
  forward(variables, x + 0.1)  # Same shapes: no retrace, or assert_max_traces raises.
  with pytest.raises(AssertionError):
    forward(variables, x[:1])  # A new shape retraces, which the guard reports.


@pytest.mark.parametrize("orthogonality", ["exact", "penalty"])
def test_half_precision_keeps_float32_parameters(config, orthogonality):
  """bf16 backbone; c(·) and the p_i in bf16 with "exact" W and in float32 with "penalty"
  (the case that diverged in bf16); the SR blocks and x_avg always float32
  (`create_model`)."""
  config.model.siriib.scales = (16, 8)
  config.model.siriib.orthogonality = orthogonality
  model = create_model(config.model, 16, dtype=jnp.bfloat16)
  x, variables = _init(model, 16)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  out, inner = model.apply(variables, x, capture_intermediates=True)
  assert out.logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out.logits)))
  inner = inner["intermediates"]
  assert inner["backbone"]["stem_conv"]["__call__"][0].dtype == jnp.bfloat16
  branch = jnp.bfloat16 if orthogonality == "exact" else jnp.float32
  siriib = inner["siriib"]
  assert siriib["extractor"]["conv0"]["__call__"][0].dtype == branch
  assert siriib["extractor"]["__call__"][0].dtype == branch
  assert [siriib[f"projection{i}"]["__call__"][0].dtype for i in range(3)] == [branch] * 3
  assert all(f.dtype == branch for f in out.features)
  # The SR blocks (W's conv, the amplitude conv, fuse, fuse_bn) and x_avg: float32.
  for i in range(2):
    block = siriib[f"sr{i}"]
    dtypes = {name: block[name]["__call__"][0].dtype
              for name in (ORTHOGONAL_MODULE[orthogonality], "amplitude", "fuse", "fuse_bn")}
    assert set(dtypes.values()) == {jnp.dtype(jnp.float32)}, dtypes
  assert out.x_avg.dtype == jnp.float32
  # The same parameters (shapes and count) as the float32 model's.
  reference = create_model(config.model, 16).init(jax.random.key(1), x)
  assert (jax.tree.map(jnp.shape, reference["params"])
          == jax.tree.map(jnp.shape, variables["params"]))


@pytest.mark.parametrize("key,value,fragment", [
    ("name", "resnet50", "must be one of"),
    ("siriib.num_skips", 4, "1, 2 or 3"),
    ("siriib.num_skips", 0, "1, 2 or 3"),
    ("siriib.scales", (32, 40, 16, 8), "[1, 32]"),
    ("siriib.variant", "XXL", "must be one of"),
    ("siriib.orth_channels", 2, "≥ 3"),
    ("mean", (0.5, 0.5, 0.5, 0.5), "3 values"),
    ("std", (0.2, 0.2), "3 values"),
    ("std", (0.2, 0.0, 0.2), "> 0"),
    ("num_classes", 1, "≥ 2"),
])
def test_bad_model_config_raises_one_clear_error(config, key, value, fragment):
  block = config.model
  *parents, leaf = key.split(".")
  for parent in parents:
    block = block[parent]
  block[leaf] = value
  with pytest.raises(ConfigError) as error:
    create_model(config.model, 32)
  message = str(error.value)
  assert f"config.model.{key}" in message and fragment in message and repr(value) in message


@pytest.mark.parametrize("stride", [2, 4])
def test_pooled_conv_is_conv_then_average_pool(stride):
  """`PooledConv` (one strided conv with the box-filtered kernel) computes `avg_pool(conv(x))`
  of `nn.Conv` with the same parameters: values, input and parameter gradients."""
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 5))
  pooled = PooledConv(7, 3, stride)
  params = pooled.init(jax.random.key(1), x)["params"]
  params = {"kernel": params["kernel"],
            "bias": jax.random.normal(jax.random.key(2), params["bias"].shape)}
  reference = nn.Conv(7, (3, 3), padding=((1, 1), (1, 1)))
  chex.assert_trees_all_equal_shapes(reference.init(jax.random.key(1), x)["params"], params)

  def conv_then_pool(params, x):
    y = reference.apply({"params": params}, x)
    return nn.avg_pool(y, (stride, stride), strides=(stride, stride))

  def loss(apply):
    return lambda params, x: jnp.sum(jnp.sin(apply(params, x)))

  ours = lambda params, x: pooled.apply({"params": params}, x)
  chex.assert_trees_all_close(ours(params, x), conv_then_pool(params, x), atol=1e-5)
  chex.assert_trees_all_close(jax.grad(loss(ours), argnums=(0, 1))(params, x),
                              jax.grad(loss(conv_then_pool), argnums=(0, 1))(params, x),
                              atol=1e-5)
  assert ours(params, x).shape == (2, 8 // stride, 8 // stride, 7)
