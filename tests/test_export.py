"""Tests of siriib_jax.export (`main.py --mode=export`): PyTorch names and layouts without
torch. The PyTorch side itself (load_state_dict, logits, AutoAttack) is bench/export_check.py.
"""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from siriib_jax import export
from siriib_jax.checkpointing import CheckpointError, Checkpoints
from siriib_jax.config_errors import ConfigError
from siriib_jax.models import create_model


def tiny(config, name="resnet18", siriib=True, width=1 / 16, **siriib_overrides):
  config.model.name = name
  config.model.width_multiplier = width
  config.model.siriib.enabled = siriib
  config.model.siriib.update(siriib_overrides)
  return config


def init(config, seed=0):
  """The model and its variables, with BatchNorm statistics set to distinct random values
  (mean ~ N(0, 0.1²), var ~ U(0.5, 1.5)), so that a swapped or dropped statistic shows."""
  model = create_model(config.model, 32)
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(seed)
  stats = jax.tree_util.tree_map_with_path(
      lambda p, v: (rng.uniform(0.5, 1.5, v.shape) if p[-1].key == "var"
                    else rng.normal(0, 0.1, v.shape)).astype(np.float32),
      variables["batch_stats"])
  return model, {"params": variables["params"], "batch_stats": stats}


def test_names_shapes_and_layouts_follow_the_stated_mapping(config):
  config = tiny(config)  # Widths 4, 8, 16, 32; SiRIIB c(·) at 1, 2, 4.
  _, variables = init(config)
  tensors = export.torch_state_dict(variables, config.model, step=45)
  params = variables["params"]
  stats = variables["batch_stats"]
  # Hand-written expectations, PyTorch's conventions: conv (out, in, kH, kW), dense (out, in).
  expected_shapes = {
      "backbone.stem_conv.weight": (4, 3, 3, 3),
      "backbone.stem_bn.weight": (4,), "backbone.stem_bn.bias": (4,),
      "backbone.stem_bn.running_mean": (4,), "backbone.stem_bn.running_var": (4,),
      "backbone.stem_bn.num_batches_tracked": (),
      "backbone.stage2_block0.Conv_0.weight": (8, 4, 3, 3),
      "backbone.stage2_block0.shortcut_conv.weight": (8, 4, 1, 1),
      "backbone.stage2_block0.shortcut_bn.running_var": (8,),
      "backbone.head.weight": (10, 32), "backbone.head.bias": (10,),
      "siriib.sr0.orthogonal.weight": (12, 3, 1, 1),
      "siriib.sr3.amplitude.bias": (12,),
      "siriib.sr1.fuse.weight": (3, 24, 1, 1),
      "siriib.sr1.fuse_bn.running_mean": (3,),
      "siriib.extractor.conv2.weight": (4, 2, 3, 3),
      "siriib.projection2.weight": (8, 4, 3, 3), "siriib.projection2.bias": (8,),
      "mean": (1, 3, 1, 1), "std": (1, 3, 1, 1),
  }
  for name, shape in expected_shapes.items():
    assert tensors[name].shape == shape, name
  # Every tensor is one of: a parameter, a BatchNorm statistic or counter, mean or std.
  num_params = len(jax.tree.leaves(params))
  num_bn = len(jax.tree.leaves(stats)) // 2
  assert len(tensors) == num_params + 3 * num_bn + 2
  # Values: transposed as the mapping says, not merely reshaped.
  kernel = np.asarray(params["backbone"]["stage2_block0"]["Conv_0"]["kernel"])  # HWIO
  np.testing.assert_array_equal(tensors["backbone.stage2_block0.Conv_0.weight"][:, :, 0, 2],
                                kernel[0, 2].T)
  np.testing.assert_array_equal(tensors["backbone.head.weight"],
                                np.asarray(params["backbone"]["head"]["kernel"]).T)
  np.testing.assert_array_equal(tensors["backbone.stem_bn.weight"],
                                params["backbone"]["stem_bn"]["scale"])
  np.testing.assert_array_equal(tensors["backbone.stem_bn.running_mean"],
                                stats["backbone"]["stem_bn"]["mean"])
  np.testing.assert_array_equal(tensors["backbone.stem_bn.running_var"],
                                stats["backbone"]["stem_bn"]["var"])
  assert tensors["siriib.sr2.fuse_bn.num_batches_tracked"].dtype == np.int64
  assert int(tensors["siriib.sr2.fuse_bn.num_batches_tracked"]) == 45
  np.testing.assert_allclose(tensors["std"].ravel(), config.model.std)
  for value in tensors.values():
    assert value.flags.c_contiguous


def _nchw_reference_logits(t, x_nchw, widths=(4, 8, 16, 32)):
  """PyTorch's semantics for a CIFAR ResNet-18 in eval mode, written from the exported
  dict alone (NCHW / OIHW convolutions, BatchNorm on running statistics, eps 1e-5)."""
  def conv(x, name, stride=1):
    w = jnp.asarray(t[f"{name}.weight"])
    pad = (w.shape[-1] - 1) // 2
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NCHW", "OIHW", "NCHW"))
  def bn(x, name):
    shape = (1, -1, 1, 1)
    return ((x - t[f"{name}.running_mean"].reshape(shape))
            / np.sqrt(t[f"{name}.running_var"].reshape(shape) + 1e-5)
            * t[f"{name}.weight"].reshape(shape) + t[f"{name}.bias"].reshape(shape))
  relu = jax.nn.relu
  x = (x_nchw - t["mean"]) / t["std"]
  x = relu(bn(conv(x, "backbone.stem_conv"), "backbone.stem_bn"))
  cin = widths[0]
  for s, (width, stride) in enumerate(zip(widths, (1, 2, 2, 2))):
    for i in range(2):
      p = f"backbone.stage{s + 1}_block{i}"
      st = stride if i == 0 else 1
      y = relu(bn(conv(x, f"{p}.Conv_0", st), f"{p}.BatchNorm_0"))
      y = bn(conv(y, f"{p}.Conv_1"), f"{p}.BatchNorm_1")
      if st != 1 or cin != width:
        x = bn(conv(x, f"{p}.shortcut_conv", st), f"{p}.shortcut_bn")
      x, cin = relu(x + y), width
  return x.mean(axis=(2, 3)) @ t["backbone.head.weight"].T + t["backbone.head.bias"]


def test_exported_resnet_in_pytorch_semantics_gives_the_jax_logits(config):
  config = tiny(config, siriib=False)
  model, variables = init(config, seed=1)
  tensors = export.torch_state_dict(variables, config.model)
  x = np.random.default_rng(0).random((3, 32, 32, 3), np.float32)
  expected = model.apply(variables, x).logits
  logits = _nchw_reference_logits(tensors, jnp.asarray(x.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)
  # And a wrong layout would not: HWIO read as OIHW gives other logits.
  wrong = dict(tensors)
  w = tensors["backbone.stage1_block0.Conv_0.weight"]
  wrong["backbone.stage1_block0.Conv_0.weight"] = np.ascontiguousarray(
      w.transpose(0, 1, 3, 2))
  assert np.abs(_nchw_reference_logits(wrong, jnp.asarray(x.transpose(0, 3, 1, 2)))
                - expected).max() > 1e-3


def test_every_backbone_exports_one_tensor_per_pytorch_parameter(config):
  for name, width in (("preact_resnet18", 1 / 16), ("wrn28_10", 0.05)):
    for siriib, variant in ((False, "base"), (True, "L")):
      cfg = tiny(config.copy_and_resolve_references(), name, siriib, width, variant=variant)
      _, variables = init(cfg)
      tensors = export.torch_state_dict(variables, cfg.model)
      assert "backbone.final_bn.running_var" in tensors and "backbone.stem_conv.weight" in tensors
      assert ("siriib.extractor.block1.shortcut_conv.weight" not in tensors) and (
          ("siriib.extractor.block0.BatchNorm_0.running_mean" in tensors) == siriib)
      for key, value in tensors.items():
        if key.endswith(".weight") and value.ndim == 4:
          assert value.shape[2] == value.shape[3] in (1, 3), key  # OIHW: square kH, kW last.


def test_exact_orthogonality_exports_w_itself(config):
  if "orthogonality" not in config.model.siriib:
    pytest.skip("this checkout's SR blocks have no exact-orthogonality mode")
  config = tiny(config, orthogonality="exact")
  _, variables = init(config)
  # A free parameter A (here 2 × an orthogonal init): the forward pass uses W = polar(A).
  params = flax.core.unfreeze(variables["params"])
  a = 2 * np.asarray(params["siriib"]["sr0"]["orthogonal_polar"]["kernel"])
  params["siriib"]["sr0"]["orthogonal_polar"]["kernel"] = a
  tensors = export.torch_state_dict({"params": params, "batch_stats": variables["batch_stats"]},
                                    config.model)
  assert not any("orthogonal_polar" in k for k in tensors)
  w = tensors["siriib.sr0.orthogonal.weight"].reshape(12, 3).T  # (in 3, out 12) as Flax's.
  np.testing.assert_allclose(w @ w.T, np.eye(3), atol=1e-5)
  np.testing.assert_allclose(w, a.reshape(3, 12) / 2, atol=1e-5)


@flax.struct.dataclass
class _State:
  params: dict
  batch_stats: dict
  step: int


def test_run_writes_safetensors_and_architecture_from_a_checkpoint(config, tmp_path):
  config = tiny(config)
  config.evaluation.checkpoint = "last"
  _, variables = init(config)
  checkpoints = Checkpoints(str(tmp_path), keep=1)
  checkpoints.save_last(12, _State(variables["params"], variables["batch_stats"], 12))
  checkpoints.close()
  paths = export.run(config, str(tmp_path))
  assert paths["weights"] == os.path.join(str(tmp_path), "export", "model.safetensors")
  tensors = load_file(paths["weights"])
  expected = export.torch_state_dict(variables, config.model, step=12)
  assert sorted(tensors) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(tensors[key], value)
    assert tensors[key].dtype == value.dtype
  with open(paths["architecture"]) as f:
    architecture = json.load(f)
  with safe_open(paths["weights"], "np") as f:
    assert json.loads(f.metadata()["architecture"]) == architecture
  assert architecture["step"] == 12 and architecture["checkpoint"] == "last"
  assert architecture["model"]["width_multiplier"] == 1 / 16
  assert architecture["model"]["siriib"]["enabled"] is True
  assert architecture["tensors"]["backbone.head.weight"] == [[10, 32], "float32"]


def test_workdir_without_checkpoint_is_a_clear_error(config, tmp_path):
  with pytest.raises(CheckpointError, match="No checkpoint in .*train first"):
    export.run(tiny(config), str(tmp_path / "never_trained"))
  assert not os.path.exists(tmp_path / "never_trained" / "export")


def test_checkpoint_of_another_model_names_what_differs(config, tmp_path):
  _, variables = init(tiny(config.copy_and_resolve_references()))  # With SiRIIB.
  other = tiny(config, siriib=False)
  with pytest.raises(ConfigError, match=r"params/siriib/.* not in the model.*--config"):
    export.export_variables(variables, other, str(tmp_path))
  assert not os.path.exists(tmp_path / "model.safetensors")
  wider = tiny(config, siriib=True, width=1 / 8)
  with pytest.raises(ConfigError, match=r"head/kernel has shape \(32, 10\) in the "
                                        r"checkpoint, \(64, 10\) in the model"):
    export.export_variables(variables, wider, str(tmp_path))


def test_unknown_variable_has_no_silent_name():
  with pytest.raises(ValueError, match="no PyTorch name.*params/block/embedding"):
    export.torch_name("params", ("block", "embedding"))
