"""`main.py --mode=export`: a trained model's weights in PyTorch's naming and layout.

RobustBench-style models are PyTorch modules; this writes a training run's checkpoint as a
`safetensors` file that such code loads with `model.load_state_dict(safetensors.torch.
load_file(path))`, without siriib_jax or JAX. Writing it needs neither torch nor a GPU:
`safetensors`' numpy API does the serialisation (a well-kept, header-plus-raw-buffer format
that cannot execute code, unlike pickled `.pt` files).

Mapping (Flax variable → PyTorch state-dict entry), with `P` the Flax module path joined
by "." (e.g. `backbone.stage2_block0.shortcut_conv`):

| Flax | PyTorch | layout |
|---|---|---|
| `params/P/kernel`, 4-D (kH, kW, in, out) | `P.weight` | conv, (out, in, kH, kW) = OIHW |
| `params/P/kernel`, 2-D (in, out) | `P.weight` | dense, (out, in) |
| `params/P/bias` | `P.bias` | unchanged |
| `params/P/scale` (BatchNorm γ) | `P.weight` | unchanged |
| `batch_stats/P/mean`, `/var` | `P.running_mean`, `P.running_var` | unchanged |
| (each BatchNorm) | `P.num_batches_tracked` | int64 scalar: the checkpoint's step |
| `config.model.mean`, `.std` | `mean`, `std` | (1, 3, 1, 1) |
| `params/P/orthogonal_polar/kernel` A ("exact" SR blocks) | `P.orthogonal.weight` | W, OIHW |

An SR block trained with `model.siriib.orthogonality="exact"` computes with W =
`orthonormal_rows(A)` of its stored A; the export writes that W, so PyTorch needs no polar
factor. All tensors but `num_batches_tracked` are float32, as trained (parameters are float32 even with
`half_precision`). `num_batches_tracked` is informative only: PyTorch reads it only when a
BatchNorm's momentum is None, and the models here use momentum 0.1. The normalisation
buffers make the file self-contained: the PyTorch model takes NCHW images in [0, 1] and
normalises inside, as the JAX model does (RobustBench's convention). SiRIIB's SR blocks
(FFT amplitude modulation) and `PooledConv` (a 3×3 convolution followed by stride×stride
average pooling, one strided convolution in JAX) have no PyTorch layer of their own; their
kernels follow the same rules, and `bench/torch_reference.py` is a PyTorch model with
exactly these names (`build_model(architecture)`), checked by `bench/export_check.py`.

Files written to `workdir/export/`:

* `model.safetensors`: the tensors above; its metadata holds `architecture` (below) as JSON.
* `architecture.json`: `{"format", "model" (config.model as a dict), "image_size",
  "num_classes", "input", "checkpoint", "step", "weights", "tensors": {name: [shape,
  dtype]}}`; `weights` is "averaged" (the checkpoint's weight average, written when
  `weight_averaging.decay > 0`; docs/weight_averaging.md) or "raw".
"""

import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from siriib_jax.runs import open_run, weights_name
from siriib_jax.config_errors import ConfigError, check_choice
from siriib_jax.models import create_model

FORMAT = "siriib_jax-export-v1"
FILE_NAME = "model.safetensors"
ARCHITECTURE_NAME = "architecture.json"


def _flatten(tree: Mapping[str, Any], prefix: tuple = ()) -> dict[tuple, Any]:
  """{path tuple: leaf} of a nested mapping (Flax variables, FrozenDict or dict)."""
  out = {}
  for key, value in tree.items():
    if hasattr(value, "items"):
      out.update(_flatten(value, prefix + (str(key),)))
    else:
      out[prefix + (str(key),)] = value
  return out


def torch_name(collection: str, path: tuple[str, ...]) -> str:
  """The PyTorch state-dict name of the Flax variable `collection/path` (module doc).

  Raises:
    ValueError: a variable this mapping does not know (another collection or leaf name).
  """
  module, leaf = ".".join(path[:-1]), path[-1]
  names = {("params", "kernel"): "weight", ("params", "bias"): "bias",
           ("params", "scale"): "weight", ("batch_stats", "mean"): "running_mean",
           ("batch_stats", "var"): "running_var"}
  if (collection, leaf) not in names:
    raise ValueError(f"no PyTorch name for the Flax variable {collection}/{'/'.join(path)}: "
                     f"the export knows params kernel/bias/scale and batch_stats mean/var")
  return f"{module}.{names[collection, leaf]}"


def torch_layout(collection: str, path: tuple[str, ...], value) -> np.ndarray:
  """`value` in PyTorch's layout: conv kernels HWIO → OIHW, dense kernels (in, out) →
  (out, in), everything else unchanged; a C-contiguous numpy array."""
  value = np.asarray(value)
  if collection == "params" and path[-1] == "kernel":
    if value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)
    elif value.ndim == 2:
      value = value.T
    else:
      raise ValueError(f"kernel {'/'.join(path)} has shape {value.shape}: the export "
                       f"knows 4-D conv (HWIO) and 2-D dense (in, out) kernels")
  return np.ascontiguousarray(value)


# SR blocks trained with `model.siriib.orthogonality="exact"` store an unconstrained A under
# `orthogonal_polar` and compute with W = orthonormal_rows(A); PyTorch gets W itself, as the
# plain 1×1 conv `orthogonal` (the "penalty" mode's name).
_EXACT_ORTHOGONAL, _ORTHOGONAL = "orthogonal_polar", "orthogonal"


def _effective_kernel(path: tuple[str, ...], value) -> tuple[tuple[str, ...], np.ndarray]:
  """(path, kernel) as the forward pass uses them: an `orthogonal_polar` kernel A (1, 1,
  C, N) becomes `orthogonal`'s W = orthonormal_rows(A), same shape; others unchanged."""
  if len(path) >= 2 and path[-2] == _EXACT_ORTHOGONAL and path[-1] == "kernel":
    from siriib_jax.svd import orthonormal_rows  # pylint: disable=g-import-not-at-top
    a = np.asarray(value, np.float32)
    w = np.asarray(orthonormal_rows(jnp.asarray(a.reshape(a.shape[-2:]))), np.float32)
    return path[:-2] + (_ORTHOGONAL, "kernel"), w.reshape(a.shape)
  return path, value


def torch_state_dict(variables: Mapping[str, Any], model_config: ml_collections.ConfigDict,
                     step: int = 0) -> dict[str, np.ndarray]:
  """PyTorch-named and -laid-out tensors of Flax `variables` (module doc's table).

  Args:
    variables: `{'params': …, 'batch_stats': …}` of a `siriib_jax.models` classifier
      (`batch_stats` may be missing for a model without BatchNorm).
    model_config: `config.model`; its `mean` and `std` become the `mean` / `std` buffers.
    step: the training step, written as every BatchNorm's `num_batches_tracked`.
  Returns:
    {name: C-contiguous numpy array}, float32 except `num_batches_tracked` (int64, shape ()).
  Raises:
    ValueError: a variable outside the mapping, or two variables with one name.
  """
  out = {}
  for collection in ("params", "batch_stats"):
    for path, value in _flatten(variables.get(collection, {})).items():
      path, value = _effective_kernel(path, value)
      name = torch_name(collection, path)
      if name in out:
        raise ValueError(f"two Flax variables map to the PyTorch name {name!r}")
      out[name] = torch_layout(collection, path, value)
      if collection == "batch_stats" and path[-1] == "mean":
        out[f"{'.'.join(path[:-1])}.num_batches_tracked"] = np.asarray(int(step), np.int64)
  for key in ("mean", "std"):
    out[key] = np.asarray(model_config[key], np.float32).reshape(1, 3, 1, 1)
  return out


def architecture(config: ml_collections.ConfigDict, step: int, checkpoint: str,
                 tensors: Mapping[str, np.ndarray]) -> dict:
  """The JSON description of an export: enough to build the PyTorch model
  (`bench/torch_reference.build_model`) and to know which run and which weights ("averaged"
  or "raw", `runs.weights_name(config)`) it came from."""
  return {
      "format": FORMAT,
      "model": config.model.to_dict(),
      "image_size": int(config.dataset.image_size),
      "num_classes": int(config.model.num_classes),
      "input": "float32 NCHW images in [0, 1] (normalised inside the model by mean/std)",
      "output": "logits (B, num_classes)",
      "checkpoint": checkpoint,
      "step": int(step),
      "weights": weights_name(config),
      "tensors": {name: [list(v.shape), str(v.dtype)] for name, v in tensors.items()},
  }


def check_variables_match(variables: Mapping[str, Any], config: ml_collections.ConfigDict):
  """Checks that `variables` have exactly the configured model's names and shapes (shapes
  only: nothing is computed or compiled).

  Raises:
    ConfigError: a bad `config.model`, or variables that differ (named, with the config keys
      to check).
  """
  model = create_model(config.model, config.dataset.image_size)
  size = config.dataset.image_size
  expected = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, size, size, 3), jnp.float32))
  problems = []
  for collection in ("params", "batch_stats"):
    want = {p: tuple(v.shape) for p, v in _flatten(expected.get(collection, {})).items()}
    have = {p: tuple(np.shape(v)) for p, v in _flatten(variables.get(collection, {})).items()}
    for path in sorted(set(want) | set(have)):
      name = f"{collection}/{'/'.join(path)}"
      if path not in have:
        problems.append(f"{name} {want[path]} is missing from the checkpoint")
      elif path not in want:
        problems.append(f"{name} {have[path]} is in the checkpoint but not in the model")
      elif want[path] != have[path]:
        problems.append(f"{name} has shape {have[path]} in the checkpoint, {want[path]} in "
                        f"the model")
  if problems:
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if
                                       len(problems) > 5 else "")
    raise ConfigError(
        f"The checkpoint does not hold the configured model ({config.model.name}, "
        f"siriib.enabled={config.model.siriib.enabled}, width_multiplier="
        f"{config.model.width_multiplier}, num_classes={config.model.num_classes}): "
        f"{shown}. Pass the --config (and overrides) the run was trained with.")


def export_variables(variables: Mapping[str, Any], config: ml_collections.ConfigDict,
                     directory: str, step: int = 0, checkpoint: str = "") -> dict[str, str]:
  """Writes `variables` of the model `config.model` describes to `directory` (module doc).

  Returns:
    {"weights": path of model.safetensors, "architecture": path of architecture.json}.
  Raises:
    ConfigError: a bad `config.model`, or variables that are not that model's.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  check_variables_match(variables, config)
  tensors = torch_state_dict(variables, config.model, step)
  description = architecture(config, step, checkpoint, tensors)
  os.makedirs(directory, exist_ok=True)
  paths = {"weights": os.path.join(directory, FILE_NAME),
           "architecture": os.path.join(directory, ARCHITECTURE_NAME)}
  save_file(tensors, paths["weights"], metadata={"architecture": json.dumps(description)})
  with open(paths["architecture"], "w") as f:
    json.dump(description, f, indent=1)
  return paths


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """`main.py --mode=export`: the checkpoint `config.evaluation.checkpoint` ("best" or
  "last") of `workdir` — its weight average when `weight_averaging.decay > 0` — written to
  `workdir/export/` (module doc).

  Returns:
    As `export_variables`.
  Raises:
    CheckpointError: no readable checkpoint in `workdir`.
    ConfigError: a bad `config.model`, or a checkpoint of another model.
  """
  create_model(config.model, config.dataset.image_size)  # Checks config.model first.
  which = config.evaluation.checkpoint
  check_choice("evaluation.checkpoint", which, ("best", "last"))
  run = open_run(workdir, config, which)
  variables, step = run.variables, run.step
  paths = export_variables(variables, config, os.path.join(os.path.abspath(workdir), "export"),
                           step=step, checkpoint=which)
  print(f"Exported the {which} checkpoint's {run.weights} weights (step {step}) "
        f"of {workdir} to {paths['weights']} "
        f"(PyTorch names and layout; architecture in {paths['architecture']}).")
  return paths
