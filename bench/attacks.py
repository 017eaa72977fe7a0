"""PGD-20 and AutoAttack (standard, L∞ 8/255): siriib_jax against PyTorch / pyautoattack on
identical weights, in the same run.

Models (`--model`, defined in Flax and in PyTorch): `light`, a strided CNN of ~95k
parameters (conv 32, conv 64 stride 2, conv 128 stride 2, global average pooling, dense);
`cnn` (conv 32-32-pool-64-64-pool, dense 128, dense 10; no BatchNorm); `r18` / `r18sr`,
this project's ResNet-18 / ResNet-18-SR at 1/8 width (copied to `torch_reference.py`'s
model through `export.torch_state_dict`). Each is trained briefly in JAX on CIFAR-10
(FGSM-AT, random start, step 1.25 ε, Wong et al. 2020, for the CNNs; PGD-5 AT for the
ResNets) so that robust accuracy is not trivially 0; the logits of both frameworks are
checked to agree within 1e-4 on the evaluation points. Then, on `--n` CIFAR-10 test
points (a stratified random subset, `--seed`):

* PGD-20 (CE, α = 2/255, one random start): siriib_jax `get_attack('pgd20')` (jitted;
  compile timed apart) against a plain PyTorch loop;
* with `--components` (one model) or `--sweep` (several): APGD-CE, APGD-T, FAB-T and Square
  each alone as an evaluation runs them, and AutoAttack standard
  (`evaluate_robustness(..., attacks=(name,))`: only the points still robust, one chunk of
  `--n`; cold, as a new process, and warm, `time_component`) against the official code
  (`pyautoattack.AutoAttack(version='standard')`, `attacks_to_run = [name]` for a
  component: its standard settings, 9 target classes, 5,000 queries; it also attacks only
  the points it classifies correctly);
* AutoAttack standard: siriib_jax `AutoAttack` (cold: with compilation; and warm: a second
  call) against `pyautoattack.AutoAttack(version='standard')`, the official code.

Reported: wall time, the ratio siriib_jax / PyTorch, robust accuracy of each. JAX runs with
XLA's Eigen convolutions, as `main.py` does (`siriib_jax/xla_cpu.py`); both frameworks on
every core (PyTorch's `torch.get_num_threads()`, XLA's CPU client; both reported).

    python bench/attacks.py --help
    python bench/attacks.py --n 500 --train-steps 800
    python bench/attacks.py --n 500 --params /tmp/cnn800.msgpack --components apgd-t,fab-t,square
    python bench/attacks.py --n 200 --params-dir /tmp/models --sweep light,cnn,r18,r18sr

Needs torch and pyautoattack (bench/requirements.txt) and ../shared/data.
"""

import argparse
import json
import logging
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "..", "shared", "data"))

from siriib_jax.runtime import configure_process  # pylint: disable=wrong-import-position

configure_process()  # As main.py runs; before JAX initialises its backends.

import flax  # pylint: disable=wrong-import-position
import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position
import torch.nn.functional as F  # pylint: disable=wrong-import-position

import cifar  # pylint: disable=wrong-import-position
from siriib_jax.attacks import AutoAttack, fgsm, get_attack, pgd, runner  # pylint: disable=wrong-import-position
from siriib_jax.models.conv import conv_general_dilated  # pylint: disable=wrong-import-position
from siriib_jax.models.model_fn import logits_fn as make_logits_fn  # pylint: disable=wrong-import-position
from timing import median_seconds  # pylint: disable=wrong-import-position
from torch_reference import load_flax_variables  # pylint: disable=wrong-import-position

EPS = 8 / 255


class SmallCNN(nn.Module):
  """Images (B, 32, 32, 3) in [0, 1] → logits (B, 10). The convolutions are the product's
  (`models/conv.py`), as in its models: their matmul kernel gradient for the FGSM-AT
  training (2.3 s a step with YNNPACK's kernel gradient, measured here) and their input
  gradient, fast inside the attacks' rolled loops."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No BatchNorm or dropout; the evaluation passes it.
    conv = lambda width: nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)),
                                 conv_general_dilated=conv_general_dilated)
    for width in (32, 64):
      x = nn.relu(conv(width)(x))
      x = nn.relu(conv(width)(x))
      x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


class LightCNN(nn.Module):
  """Images (B, 32, 32, 3) in [0, 1] → logits (B, 10): three 3×3 convolutions of 32, 64 and
  128 channels (the last two with stride 2), ReLU after each, global average pooling, one
  dense layer; about 95k parameters. A model so cheap that an attack's fixed costs (host
  loop, compilation, padding, synchronisation) decide its time, as on a GPU."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    for width, stride in ((32, 1), (64, 2), (128, 2)):
      x = nn.relu(nn.Conv(width, (3, 3), (stride, stride), padding=((1, 1), (1, 1)),
                          conv_general_dilated=conv_general_dilated)(x))
    return nn.Dense(10)(x.mean(axis=(1, 2)))


class TorchLightCNN(torch.nn.Module):
  """`LightCNN` in PyTorch (NCHW input)."""

  def __init__(self):
    super().__init__()
    for i, (cin, cout, stride) in enumerate(((3, 32, 1), (32, 64, 2), (64, 128, 2))):
      setattr(self, f"Conv_{i}", torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=1))
    self.Dense_0 = torch.nn.Linear(128, 10)

  def forward(self, x):
    for i in range(3):
      x = F.relu(getattr(self, f"Conv_{i}")(x))
    return self.Dense_0(x.mean(dim=(2, 3)))


class TorchSmallCNN(torch.nn.Module):
  """The same network in PyTorch (NCHW input; flattened in NHWC order as Flax does)."""

  def __init__(self):
    super().__init__()
    for i, (cin, cout) in enumerate(((3, 32), (32, 32), (32, 64), (64, 64))):
      setattr(self, f"Conv_{i}", torch.nn.Conv2d(cin, cout, 3, padding=1))
    self.Dense_0 = torch.nn.Linear(8 * 8 * 64, 128)
    self.Dense_1 = torch.nn.Linear(128, 10)

  def forward(self, x):
    for i in range(4):
      x = F.relu(getattr(self, f"Conv_{i}")(x))
      if i % 2:
        x = F.avg_pool2d(x, 2)
    x = F.relu(self.Dense_0(x.permute(0, 2, 3, 1).flatten(1)))
    return self.Dense_1(x)


def _parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=500, help="test points (stratified)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--train-steps", type=int, default=800, help="FGSM-AT steps, batch 128")
  p.add_argument("--skip-aa", action="store_true", help="PGD-20 only")
  p.add_argument("--aa-frameworks", default="jax,torch",
                 help="whose AutoAttack to run: comma list of jax, torch")
  p.add_argument("--components", default="",
                 help="comma list of apgd-t, fab-t, square: each alone as an evaluation runs "
                      "it (evaluate_robustness with that one attack, compilation included) "
                      "against the official component alone (pyautoattack, standard "
                      "settings, attacks_to_run=[name]), then stop")
  p.add_argument("--no-warm-aa", action="store_true", help="skip the second (warm) JAX AA")
  p.add_argument("--params", default="",
                 help="file of the trained CNN's parameters: loaded if it exists, else "
                      "written after training")
  p.add_argument("--forward-batches", default="",
                 help="comma list of batch sizes: time the forward pass and the input "
                      "gradient alone at each (both frameworks, alternated) and stop")
  p.add_argument("--model", default="cnn", choices=MODELS,
                 help="light: strided CNN of ~95k parameters; cnn: conv 32-32-64-64 + dense "
                      "128; r18 / r18sr: ResNet-18 / ResNet-18-SR at 1/8 width")
  p.add_argument("--sweep", default="",
                 help="comma list of models (--model's choices): each attack of --attacks "
                      "alone on each, against the official code, then stop")
  p.add_argument("--attacks", default=",".join(SWEEP_ATTACKS),
                 help="the sweep's attacks: AutoAttack components and autoattack")
  p.add_argument("--warm", default="apgd-ce,apgd-t",
                 help="the sweep's attacks also run warm (a second call, nothing compiled)")
  p.add_argument("--params-dir", default="",
                 help="folder of trained weights, <model>.msgpack (loaded if there, else "
                      "written after training); overrides --params")
  p.add_argument("--json", default="")
  return p.parse_args(argv)


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
  """n indices, n / 10 per class, drawn at random with `seed`."""
  rng = np.random.RandomState(seed)
  classes = np.unique(labels)
  per_class = n // len(classes)
  idx = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]
  return np.sort(np.concatenate(idx))


def resnet_config(name: str):
  """`config.model` of ResNet-18 ('r18') or ResNet-18-SR ('r18sr') at 1/8 width (the
  quickstart's model; default SiRIIB options)."""
  from siriib_jax.configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  config.model.name = "resnet18"
  config.model.width_multiplier = 0.125
  config.model.siriib.enabled = name == "r18sr"
  return config.model


def build_models(name: str, seed: int = 0):
  """(Flax module, its initial variables, a function that builds the PyTorch model from
  trained Flax variables) of the sweep's model `name` (MODELS)."""
  if name in ("light", "cnn"):
    model = LightCNN() if name == "light" else SmallCNN()
    torch_class = TorchLightCNN if name == "light" else TorchSmallCNN

    def to_torch(variables):
      torch_model = torch_class()
      load_flax_variables(torch_model, variables)
      return torch_model.eval()
  else:
    from siriib_jax import export  # pylint: disable=import-outside-toplevel
    from siriib_jax.models import create_model  # pylint: disable=import-outside-toplevel
    import torch_reference  # pylint: disable=import-outside-toplevel
    model_config = resnet_config(name)
    model = create_model(model_config, 32)

    def to_torch(variables):
      torch_model = torch_reference.build_model({"model": model_config.to_dict()})
      tensors = export.torch_state_dict(variables, model_config)
      torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()},
                                  strict=True)
      return torch_reference.LogitsOnly(torch_model).eval()
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)))
  return model, flax.core.unfreeze(variables), to_torch


MODELS = ("light", "cnn", "r18", "r18sr")


def train(name: str, steps: int, seed: int):
  """Adversarial training (cross-entropy only; also for ResNet-18-SR, whose SiRIIB terms a
  timing benchmark does not need) of the model `name` on CIFAR-10 train: Adam 1e-3, batch 128,
  BatchNorm in training mode. Returns (model, variables, to_torch)."""
  images, labels = cifar.load("cifar10", "train")
  model, variables, to_torch = build_models(name, seed)
  params, stats = variables["params"], variables.get("batch_stats", {})
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)
  # FGSM-AT for the CNNs; the ResNets, whose BatchNorm FGSM-AT overfits catastrophically
  # in this budget (robust accuracy 0 after 400 steps), with PGD-5 (α = 2/255).
  attack = (fgsm(EPS, step_size=1.25 * EPS, random_start=True) if name in ("light", "cnn")
            else pgd(EPS, 2 / 255, 5, keep="last"))

  def forward(p, stats, x):
    """Logits with the batch's BatchNorm statistics, and the updated running ones."""
    if not stats:
      return make_logits_fn(model, {"params": p})(x), stats
    output, updated = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                  mutable=["batch_stats"])
    return getattr(output, "logits", output), updated["batch_stats"]

  @jax.jit
  def step(params, stats, opt_state, x, y, key):
    x = x.astype(jnp.float32) / 255.0
    x_adv = jax.lax.stop_gradient(attack(lambda v: forward(params, stats, v)[0], x, y,
                                         key).x_adv)
    def loss_fn(p):
      logits, new_stats = forward(p, stats, x_adv)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_stats
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  rng = np.random.RandomState(seed)
  key = jax.random.PRNGKey(seed + 1)
  start = time.perf_counter()
  for i in range(steps):
    idx = rng.randint(0, len(images), 128)
    x = images[idx]
    flip = rng.rand(128) < 0.5
    x[flip] = x[flip, :, ::-1]
    params, stats, opt_state, loss = step(params, stats, opt_state, x,
                                          labels[idx].astype(np.int32),
                                          jax.random.fold_in(key, i))
  jax.block_until_ready(params)
  print(f"trained {name}: {steps} adversarial training steps in "
        f"{time.perf_counter() - start:.0f} s, last loss {float(loss):.3f}", flush=True)
  variables = {"params": params, **({"batch_stats": stats} if stats else {})}
  return model, variables, to_torch


def torch_pgd(model, x, y, steps=20, alpha=2 / 255, seed=0):
  """PGD-k on the cross-entropy from a uniform random start (PyTorch)."""
  g = torch.Generator().manual_seed(seed)
  x_adv = (x + (torch.rand(x.shape, generator=g) * 2 - 1) * EPS).clamp(0, 1)
  for _ in range(steps):
    x_adv.requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y, reduction="sum")
    grad, = torch.autograd.grad(loss, x_adv)
    x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - EPS), x + EPS)
    x_adv = x_adv.clamp(0, 1)
  return x_adv.detach()


def time_forward(logits_fn, torch_model, x: np.ndarray, y: np.ndarray, repeats: int = 5,
                 calls: int = 10) -> dict:
  """Median seconds of one forward pass of (B, 32, 32, 3) `x` in JAX (jitted) and PyTorch
  (no_grad), and of one input gradient of the summed cross-entropy with labels `y` (B,)
  (what a gradient attack's iteration computes: `jax_grad`, `torch_grad`), `repeats`
  alternated rounds of `calls` each."""
  x_t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  y_t = torch.from_numpy(y).long()
  apply = jax.jit(lambda f, v: f(v))
  grad = jax.jit(jax.grad(lambda v, f, labels: jnp.sum(
      optax.softmax_cross_entropy_with_integer_labels(f(v), labels))))

  def torch_grad():
    v = x_t.clone().requires_grad_(True)
    loss = F.cross_entropy(torch_model(v), y_t, reduction="sum")
    return torch.autograd.grad(loss, v)[0]

  def torch_forward():
    with torch.no_grad():
      return torch_model(x_t)

  return median_seconds({"jax": lambda: jax.block_until_ready(apply(logits_fn, x)),
                         "jax_grad": lambda: jax.block_until_ready(grad(x, logits_fn, y)),
                         "torch": torch_forward, "torch_grad": torch_grad}, repeats, calls)


def time_component(name: str, run: dict, seed: int, clock=None, warm: bool = True) -> dict:
  """One attack as an evaluation runs it — an AutoAttack component alone, or 'autoattack'
  (standard) — siriib_jax's `evaluate_robustness(..., attacks=(name,))` twice: cold (after
  `runner.clear_caches`, as a new process without the persistent compilation cache: every
  program traced and compiled; `clock`, a `gpu_autoattack.CompileClock`, sums the backend
  compilation apart) and warm (the same call again: nothing compiles, as a repeated
  evaluation or `--mode=eval` with the cache); then pyautoattack's (standard settings;
  `attacks_to_run = [name]` for a component), on `run`'s points (`prepare`), both in one
  chunk of every point. Returns seconds and robust accuracy of each, the ratios cold and
  warm, and for 'autoattack' the seconds of each component of both."""
  import pyautoattack  # pylint: disable=import-outside-toplevel
  from siriib_jax.configs import default  # pylint: disable=import-outside-toplevel
  from siriib_jax.evaluation import evaluate_robustness  # pylint: disable=import-outside-toplevel
  from gpu_autoattack import OfficialClock  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  config.evaluation.batch_size = len(run["y"])  # One chunk, as pyautoattack's bs = n below.
  config.evaluation.seed = seed
  config.evaluation.checklist.large_eps = 0.0  # The attack alone.
  config.evaluation.skip_ablation = ()
  result = {}
  for call in ("cold", "warm") if warm else ("cold",):  # Cold: as a new process; warm: again.
    if call == "cold":
      runner.clear_caches()
    if clock is not None:
      clock.start()
    start = time.perf_counter()
    report = evaluate_robustness(run["model"], run["variables"], config,
                                 (run["x"], run["y"]), attacks=(name,))
    result[f"jax_{call}_s"] = time.perf_counter() - start
    result[f"robust_jax_{call}"] = report.rows[-1].accuracy
    if clock is not None:
      result.update({f"jax_{call}_{k}": v for k, v in clock.read().items()})
    if name == "autoattack":
      result[f"jax_{call}_components_s"] = {
          k: round(v.get("seconds", float("nan")), 2)
          for k, v in report.autoattack.get("autoattack", {}).items()}
  adversary = pyautoattack.AutoAttack(run["torch_model"], eps=EPS, norm="Linf",
                                      version="standard", seed=seed, device="cpu")
  if name != "autoattack":
    adversary.attacks_to_run = [name]
  official = OfficialClock()
  aa_log = logging.getLogger("auto-attack")
  aa_log.setLevel(logging.DEBUG)
  aa_log.addHandler(official)
  try:
    start = time.perf_counter()
    x_adv, _ = adversary.run_standard_evaluation(run["x_t"], run["y_t"],
                                                 batch_size=len(run["y"]))
    result["torch_s"] = time.perf_counter() - start
  finally:
    aa_log.removeHandler(official)
  if name == "autoattack":
    result["torch_components_s"] = {k: round(v, 2) for k, v in official.seconds.items()}
  with torch.no_grad():
    result["robust_torch"] = float((run["torch_model"](x_adv).argmax(-1) == run["y_t"])
                                   .float().mean())
  result["ratio_cold"] = result["jax_cold_s"] / result["torch_s"]
  if warm:
    result["ratio_warm"] = result["jax_warm_s"] / result["torch_s"]
  return result


SWEEP_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square", "autoattack")


def sweep(args, out: dict) -> None:
  """`--sweep`: for each model, each attack of `--attacks` alone (`time_component`),
  siriib_jax against pyautoattack; a JSON line after each, a Markdown table at the end."""
  from gpu_autoattack import CompileClock  # pylint: disable=import-outside-toplevel
  clock = CompileClock()
  out["xla_threads"] = os.cpu_count()
  out["sweep"] = {}
  for name in args.sweep.split(","):
    run = prepare(name, args)
    entry = out["sweep"].setdefault(name, {"info": run["info"]})
    for attack in args.attacks.split(","):
      entry[attack] = time_component(attack, run, args.seed, clock,
                                     warm=attack in args.warm.split(","))
      print(json.dumps({"model": name, "attack": attack, **entry[attack]}), flush=True)
      if args.json:
        with open(args.json, "w") as f:
          json.dump(out, f, indent=1)
  print(sweep_table(out["sweep"]))
  _finish(out, args.json)


def sweep_table(results: dict) -> str:
  """Markdown: one row per model and attack (seconds cold and warm, compilation, ratios,
  robust accuracy)."""
  lines = ["| model | attack | siriib_jax cold s (compile s, programs) | warm s | official s "
           "| ratio cold | ratio warm | robust accuracy JAX / official |",
           "|---|---|---|---|---|---|---|---|"]
  for name, entry in results.items():
    for attack, r in entry.items():
      if attack == "info":
        continue
      warm = f"{r['jax_warm_s']:.1f}" if "jax_warm_s" in r else "—"
      ratio_warm = f"{r['ratio_warm']:.2f}" if "ratio_warm" in r else "—"
      lines.append(
          f"| {name} | {attack} | {r['jax_cold_s']:.1f} ({r.get('jax_cold_compile_seconds')}, "
          f"{r.get('jax_cold_programs_compiled')}) | {warm} | {r['torch_s']:.1f} | "
          f"**{r['ratio_cold']:.2f}** | {ratio_warm} | "
          f"{100 * r['robust_jax_cold']:.1f} % / {100 * r['robust_torch']:.1f} % |")
  return "\n".join(lines)


def _load():
  with open("/proc/loadavg") as f:
    return " ".join(f.read().split()[:3])


def prepare(name: str, args) -> dict:
  """The trained model `name` (loaded from `--params` / `--params-dir` if there, else
  trained and written there), its PyTorch copy, and the points: logits checked to agree."""
  path = (os.path.join(args.params_dir, f"{name}.msgpack") if args.params_dir
          else args.params)
  if path and os.path.exists(path):
    model, template, to_torch = build_models(name)
    with open(path, "rb") as f:
      variables = flax.serialization.from_bytes(template, f.read())
  else:
    model, variables, to_torch = train(name, args.train_steps, args.seed)
    if path:
      with open(path, "wb") as f:
        f.write(flax.serialization.to_bytes(variables))
  images, labels = cifar.load("cifar10", "test")
  idx = stratified_subset(labels, args.n, args.seed)
  x_np = images[idx].astype(np.float32) / 255.0
  y_np = labels[idx].astype(np.int32)
  torch_model = to_torch(variables)
  x_t = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous()
  y_t = torch.from_numpy(y_np).long()
  logits_fn = make_logits_fn(model, variables)
  logits_j = np.asarray(jax.jit(lambda f, v: f(v))(logits_fn, x_np))
  with torch.no_grad():
    logits_t = torch_model(x_t).numpy()
  info = {"model": name, "parameters": int(sum(np.size(a) for a in
                                             jax.tree_util.tree_leaves(variables["params"]))),
          "logits_max_abs_diff": float(np.abs(logits_j - logits_t).max()),
          "clean_acc_jax": float((logits_j.argmax(-1) == y_np).mean()),
          "clean_acc_torch": float((logits_t.argmax(-1) == y_np).mean())}
  assert info["logits_max_abs_diff"] < 1e-4 * max(1.0, np.abs(logits_j).max()), info
  return {"model": model, "variables": variables, "torch_model": torch_model,
          "logits_fn": logits_fn, "x": x_np, "y": y_np, "x_t": x_t, "y_t": y_t,
          "info": info}


def main(argv=None):
  args = _parse_args(argv)
  out = {"n": args.n, "seed": args.seed, "load_start": _load(),
         "torch_threads": torch.get_num_threads()}
  if args.sweep:
    sweep(args, out)
    return
  run = prepare(args.model, args)
  model, variables, torch_model = run["model"], run["variables"], run["torch_model"]
  x_np, y_np, x_t, y_t = run["x"], run["y"], run["x_t"], run["y_t"]
  logits_fn = run["logits_fn"]
  out.update(run["info"])
  print(json.dumps(out), flush=True)

  if args.forward_batches:
    for batch in map(int, args.forward_batches.split(",")):
      x_batch = np.resize(x_np, (batch,) + x_np.shape[1:])
      seconds = time_forward(logits_fn, torch_model, x_batch, np.resize(y_np, batch))
      out[f"forward_{batch}"] = {**seconds, "ratio": seconds["jax"] / seconds["torch"],
                                 "ratio_grad": seconds["jax_grad"] / seconds["torch_grad"]}
      print(json.dumps({"batch": batch, **out[f"forward_{batch}"]}), flush=True)
    _finish(out, args.json)
    return

  if args.components:
    for name in args.components.split(","):
      out[name] = time_component(name, run, args.seed)
      print(json.dumps(out), flush=True)
    _finish(out, args.json)
    return

  # PGD-20.
  pgd20 = get_attack("pgd20", EPS, step_size=2 / 255)
  pgd_run = jax.jit(lambda f, x, y, key: pgd20(f, x, y, key))
  key = jax.random.PRNGKey(args.seed)
  start = time.perf_counter()
  compiled = pgd_run.lower(logits_fn, x_np, y_np, key).compile()
  out["pgd20_jax_compile_s"] = time.perf_counter() - start
  for rep in range(2):  # Alternated, twice.
    start = time.perf_counter()
    result = compiled(logits_fn, x_np, y_np, key)
    jax.block_until_ready(result)
    out[f"pgd20_jax_s_{rep}"] = time.perf_counter() - start
    start = time.perf_counter()
    x_adv_t = torch_pgd(torch_model, x_t, y_t, seed=args.seed)
    out[f"pgd20_torch_s_{rep}"] = time.perf_counter() - start
  out["pgd20_jax_s"] = min(out["pgd20_jax_s_0"], out["pgd20_jax_s_1"])
  out["pgd20_torch_s"] = min(out["pgd20_torch_s_0"], out["pgd20_torch_s_1"])
  out["pgd20_ratio"] = out["pgd20_jax_s"] / out["pgd20_torch_s"]
  out["pgd20_robust_jax"] = float(1 - np.asarray(result.success).mean())
  with torch.no_grad():
    out["pgd20_robust_torch"] = float((torch_model(x_adv_t).argmax(-1) == y_t).float().mean())
  print(json.dumps(out), flush=True)

  if not args.skip_aa:
    import pyautoattack  # pylint: disable=import-outside-toplevel
    aa_log = logging.getLogger("auto-attack")  # Its per-attack times are debug lines.
    aa_log.setLevel(logging.DEBUG)
    aa_log.addHandler(logging.StreamHandler(sys.stdout))
    jax_aa = AutoAttack(EPS, "linf", "standard")
    runs = [("cold", 1), ("warm", 2)] if not args.no_warm_aa else [("cold", 1)]
    for name, salt in runs:
      if "jax" in args.aa_frameworks.split(","):
        start = time.perf_counter()
        res = jax_aa(logits_fn, x_np, y_np, jax.random.PRNGKey(args.seed + salt))
        out[f"aa_jax_{name}_s"] = time.perf_counter() - start
        out[f"aa_robust_jax_{name}"] = float(1 - res.success.mean())
        out[f"aa_jax_{name}_components"] = {
            k: {"broken": int(v.success.sum()), "seconds": round(v.seconds, 1)}
            for k, v in res.components.items()}
        print(json.dumps(out), flush=True)
      if name == "cold" and "torch" in args.aa_frameworks.split(","):
        adversary = pyautoattack.AutoAttack(torch_model, eps=EPS, norm="Linf",
                                            version="standard", seed=args.seed, device="cpu")
        start = time.perf_counter()
        x_adv_aa, _ = adversary.run_standard_evaluation(x_t, y_t, batch_size=args.n)
        out["aa_torch_s"] = time.perf_counter() - start
        with torch.no_grad():
          out["aa_robust_torch"] = float(
              (torch_model(x_adv_aa).argmax(-1) == y_t).float().mean())
        print(json.dumps(out), flush=True)
    if "aa_torch_s" in out and "aa_jax_cold_s" in out:
      out["aa_ratio_cold"] = out["aa_jax_cold_s"] / out["aa_torch_s"]
    if "aa_jax_warm_s" in out and "aa_torch_s" in out:
      out["aa_ratio_warm"] = out["aa_jax_warm_s"] / out["aa_torch_s"]
  _finish(out, args.json)


def _finish(out: dict, path: str):
  out["load_end"] = _load()
  print(json.dumps(out), flush=True)
  if path:
    with open(path, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
