"""The PyTorch export (`main.py --mode=export`, siriib_jax/export.py) checked in PyTorch.

Three checks, each printed as one JSON line and gathered in `--json`:

1. `sweep` (random initialisation, every backbone): ResNet-18, PreAct-ResNet-18, WRN-28-10
   and WRN-34-10 (narrowed by `width_multiplier`), with and without SiRIIB, SiRIIB's `L` and
   `XL` extractors and `orthogonality="exact"` where the config has it. BatchNorm running
   statistics are set to random values (not the init's 0 / 1) so that a swapped or unused
   statistic shows. Each model is exported with `export.export_variables`, loaded into
   `bench/torch_reference.build_model(architecture)` with `load_state_dict(strict=True)`
   from `safetensors.torch.load_file`, and the eval-mode logits of 16 random images are
   compared with the JAX model's.
2. `logits` (a trained run): the export of `--workdir` (written by `main.py --mode=export`
   beforehand, or by this script with `--export`), loaded the same way; the logits of
   `--n` stratified real CIFAR-10 test images (../shared/data) in PyTorch and in JAX.
3. `autoattack`: on `--aa-n` of those points (a stratified subset), the official AutoAttack
   code (`pyautoattack`, version standard, L∞ 8/255) on the exported PyTorch model and
   siriib_jax's `AutoAttack` on the JAX model; robust accuracy of each (AutoAttack's own
   final count: points whose adversarial example, or clean image, is still classified
   correctly), and their difference.

`--aa-frameworks torch` or `jax` runs one side only (same points, same seed), e.g. two
processes side by side; the difference is then read from their two JSON outputs.

Exit status 1 when a logit difference exceeds `--tol` or the robust accuracies differ by
more than `--aa-tol` (fractions; defaults 1e-3 and 0.01).

    python main.py --config configs/quickstart.py --workdir /tmp/export_qs --mode=export
    python bench/export_check.py --workdir /tmp/export_qs --n 256 --aa-n 200

Needs torch, safetensors and pyautoattack (bench/requirements.txt) and ../shared/data.
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "..", "shared", "data"))

from siriib_jax.runtime import configure_process  # pylint: disable=wrong-import-position

configure_process()  # As main.py runs; before JAX initialises its backends.

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import ml_collections  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position
from safetensors.torch import load_file  # pylint: disable=wrong-import-position

import cifar  # pylint: disable=wrong-import-position
import torch_reference  # pylint: disable=wrong-import-position
from siriib_jax.configs import default as default_config  # pylint: disable=wrong-import-position
from siriib_jax import export  # pylint: disable=wrong-import-position
from siriib_jax.attacks import AutoAttack  # pylint: disable=wrong-import-position
from siriib_jax.checkpointing import load_variables  # pylint: disable=wrong-import-position
from siriib_jax.data.splits import stratified_subset  # pylint: disable=wrong-import-position
from siriib_jax.models import create_model  # pylint: disable=wrong-import-position

EPS = 8 / 255

# (name, overrides of config.model) for the random-initialisation sweep.
SWEEP = (
    ("resnet18", dict(name="resnet18", width_multiplier=0.125), dict(enabled=False)),
    ("resnet18-SR", dict(name="resnet18", width_multiplier=0.125), dict(enabled=True)),
    ("resnet18-SR-exact", dict(name="resnet18", width_multiplier=0.125),
     dict(enabled=True, orthogonality="exact")),
    ("preact_resnet18-SR", dict(name="preact_resnet18", width_multiplier=0.125),
     dict(enabled=True, num_skips=2)),
    ("wrn28_10", dict(name="wrn28_10", width_multiplier=0.1), dict(enabled=False)),
    ("wrn28_10-SR-L", dict(name="wrn28_10", width_multiplier=0.1),
     dict(enabled=True, variant="L")),
    ("wrn34_10-SR-XL-100", dict(name="wrn34_10", width_multiplier=0.05, num_classes=100),
     dict(enabled=True, variant="XL", scales=(32, 16))),
)


def _model_config(model: dict, siriib: dict) -> ml_collections.ConfigDict:
  config = default_config.get_config()
  siriib = dict(siriib)
  if "orthogonality" in siriib and "orthogonality" not in config.model.siriib:
    return None  # This checkout's models have no exact-orthogonality mode.
  config.model.update(model)
  config.model.siriib.update(siriib)
  config.dataset.num_classes = config.model.num_classes
  return config


def _random_stats(variables, seed: int):
  """`variables` with every BatchNorm mean ~ N(0, 0.1²) and var ~ U(0.5, 1.5)."""
  rng = np.random.default_rng(seed)
  stats = jax.tree_util.tree_map_with_path(
      lambda path, v: (rng.uniform(0.5, 1.5, v.shape) if path[-1].key == "var"
                       else rng.normal(0, 0.1, v.shape)).astype(np.float32),
      variables["batch_stats"])
  return {"params": variables["params"], "batch_stats": stats}


def load_exported(directory: str):
  """(PyTorch model in eval mode, architecture dict) of an export folder."""
  with open(os.path.join(directory, export.ARCHITECTURE_NAME)) as f:
    architecture = json.load(f)
  model = torch_reference.build_model(architecture)
  model.load_state_dict(load_file(os.path.join(directory, export.FILE_NAME)), strict=True)
  return model.eval(), architecture


def torch_logits(model, x_nhwc: np.ndarray, batch: int = 128) -> np.ndarray:
  with torch.no_grad():
    return np.concatenate([
        model(torch.from_numpy(x_nhwc[i:i + batch]).permute(0, 3, 1, 2).contiguous())[0]
        .numpy() for i in range(0, len(x_nhwc), batch)])


def sweep(seed: int) -> dict:
  """Check 1 (module doc): {model: max |Δ logits|}."""
  out = {}
  x = np.random.default_rng(seed).random((16, 32, 32, 3), np.float32)
  for name, model_overrides, siriib_overrides in SWEEP:
    config = _model_config(model_overrides, siriib_overrides)
    if config is None:
      out[name] = "not in this checkout"
      continue
    model = create_model(config.model, 32)
    variables = _random_stats(model.init(jax.random.PRNGKey(seed), x[:1]), seed)
    with tempfile.TemporaryDirectory() as directory:
      export.export_variables(variables, config, directory, step=7)
      torch_model, _ = load_exported(directory)
    logits_j = np.asarray(jax.jit(lambda v, x: model.apply(v, x).logits)(variables, x))
    out[name] = float(np.abs(torch_logits(torch_model, x) - logits_j).max())
    print(json.dumps({"sweep": name, "max_abs_diff": out[name],
                      "logit_scale": float(np.abs(logits_j).max())}), flush=True)
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", help="A training run whose export/ to check.")
  parser.add_argument("--export", action="store_true",
                      help="Export --workdir first (as main.py --mode=export with its "
                      "architecture's model config; checkpoint --checkpoint).")
  parser.add_argument("--config", default=os.path.join(ROOT, "configs", "quickstart.py"),
                      help="With --export: the config file the run was trained with.")
  parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
  parser.add_argument("--n", type=int, default=256, help="Test images for the logits.")
  parser.add_argument("--aa-n", type=int, default=200, help="AutoAttack points; 0: skip.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tol", type=float, default=1e-3, help="Max |Δ logits| allowed.")
  parser.add_argument("--aa-tol", type=float, default=0.01,
                      help="Max |Δ robust accuracy| allowed (fraction).")
  parser.add_argument("--aa-frameworks", default="torch,jax",
                      help="Which AutoAttack to run: torch (pyautoattack), jax, or both (the "
                      "difference is checked only with both; the points are the same).")
  parser.add_argument("--skip-sweep", action="store_true")
  parser.add_argument("--json", help="Write the results here.")
  args = parser.parse_args(argv)
  out = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
         "jax": jax.__version__}
  failures = []
  if not args.skip_sweep:
    out["sweep"] = sweep(args.seed)
    failures += [f"sweep {k}: {v:.2e}" for k, v in out["sweep"].items()
                 if isinstance(v, float) and v > args.tol]
  if args.workdir:
    directory = os.path.join(os.path.abspath(args.workdir), "export")
    if args.export:
      import importlib.util  # pylint: disable=import-outside-toplevel
      spec = importlib.util.spec_from_file_location("run_config", args.config)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      config = module.get_config()
      config.evaluation.checkpoint = args.checkpoint
      export.run(config, args.workdir)
    torch_model, architecture = load_exported(directory)
    config = default_config.get_config()
    config.model.update(architecture["model"])
    model = create_model(config.model, architecture["image_size"])
    variables, step = load_variables(args.workdir, architecture["checkpoint"] or "best")
    if step != architecture["step"]:
      failures.append(f"the export is of step {architecture['step']}, the checkpoint "
                      f"{architecture['checkpoint']!r} of step {step}")
    images, labels = cifar.load("cifar10", "test")
    idx = np.sort(stratified_subset(labels, args.n, args.seed))
    x = images[idx].astype(np.float32) / 255.0
    y = labels[idx].astype(np.int32)
    apply_fn = jax.jit(lambda v, x: model.apply(v, x).logits)
    logits_j = np.asarray(apply_fn(variables, x))
    logits_t = torch_logits(torch_model, x)
    diff = np.abs(logits_j - logits_t)
    out["logits"] = {"n": args.n, "step": int(step), "max_abs_diff": float(diff.max()),
                     "mean_abs_diff": float(diff.mean()),
                     "logit_scale": float(np.abs(logits_j).max()),
                     "argmax_agree": float((logits_j.argmax(-1) == logits_t.argmax(-1)).mean()),
                     "clean_acc_jax": float((logits_j.argmax(-1) == y).mean()),
                     "clean_acc_torch": float((logits_t.argmax(-1) == y).mean())}
    print(json.dumps({"logits": out["logits"]}), flush=True)
    if diff.max() > args.tol:
      failures.append(f"logits max |Δ| {diff.max():.2e} > {args.tol}")
    if args.aa_n:
      import pyautoattack  # pylint: disable=import-outside-toplevel
      logging.getLogger("auto-attack").setLevel(logging.INFO)
      sub = np.sort(stratified_subset(y, args.aa_n, args.seed))
      xa, ya = x[sub], y[sub]
      x_t = torch.from_numpy(xa).permute(0, 3, 1, 2).contiguous()
      y_t = torch.from_numpy(ya).long()
      frameworks = args.aa_frameworks.split(",")
      aa = {"n": args.aa_n, "eps": EPS,
            "clean_acc": float((np.asarray(apply_fn(variables, xa)).argmax(-1) == ya).mean())}
      if "torch" in frameworks:
        wrapped = torch_reference.LogitsOnly(torch_model).eval()
        adversary = pyautoattack.AutoAttack(wrapped, norm="Linf", eps=EPS,
                                            version="standard", seed=args.seed, device="cpu")
        start = time.perf_counter()
        x_adv_t, _ = adversary.run_standard_evaluation(x_t, y_t, batch_size=len(xa))
        aa["seconds_pyautoattack"] = round(time.perf_counter() - start, 1)
        with torch.no_grad():
          aa["robust_pyautoattack"] = float((wrapped(x_adv_t).argmax(-1) == y_t).float().mean())
        # The official code's adversarial examples lie in the ε-ball (checked, not assumed).
        aa["torch_linf"] = float((x_adv_t - x_t).abs().max())
        print(json.dumps({"autoattack": aa}), flush=True)
      if "jax" in frameworks:
        logits_fn = jax.tree_util.Partial(apply_fn, variables)
        start = time.perf_counter()
        result = AutoAttack(EPS, "linf", "standard")(logits_fn, xa, ya,
                                                     jax.random.PRNGKey(args.seed))
        aa["seconds_siriib_jax"] = round(time.perf_counter() - start, 1)
        aa["robust_siriib_jax"] = float(1 - np.asarray(result.success).mean())
        aa["jax_linf"] = float(np.abs(np.asarray(result.x_adv) - xa).max())
        print(json.dumps({"autoattack": aa}), flush=True)
      out["autoattack"] = aa
      if "robust_pyautoattack" in aa and "robust_siriib_jax" in aa:
        aa["diff_pp"] = 100 * (aa["robust_siriib_jax"] - aa["robust_pyautoattack"])
        if abs(aa["diff_pp"]) > 100 * args.aa_tol + 1e-9:
          failures.append(f"robust accuracy {aa['robust_siriib_jax']:.3f} (siriib_jax) vs "
                          f"{aa['robust_pyautoattack']:.3f} (pyautoattack)")
  out["failures"] = failures
  print(json.dumps(out), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  sys.exit(1 if failures else 0)


if __name__ == "__main__":
  main()
