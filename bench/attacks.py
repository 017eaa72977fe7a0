"""PGD-20 and AutoAttack (standard, L∞ 8/255): siriib_jax against PyTorch / pyautoattack on
identical weights, in the same run.

A small CNN (conv 32-32-pool-64-64-pool, dense 128, dense 10; no BatchNorm) is defined in
Flax and in PyTorch. It is trained briefly in JAX with FGSM adversarial training (random
start, step 1.25 ε; Wong et al. 2020) on CIFAR-10 so that robust accuracy is not trivially
0, its weights are copied to PyTorch and the logits of both are checked to agree within
1e-4 on the evaluation points. Then, on `--n` CIFAR-10 test points (a stratified random
subset, `--seed`):

* PGD-20 (CE, α = 2/255, one random start): siriib_jax `get_attack('pgd20')` (jitted;
  compile timed apart) against a plain PyTorch loop;
* with `--components`: APGD-T, FAB-T and Square each alone as an evaluation runs them
  (`evaluate_robustness(..., attacks=(name,))`: only the points still robust, chunks of
  `evaluation.batch_size` = `--n`) against the official component alone
  (`pyautoattack.AutoAttack(version='standard')` with `attacks_to_run = [name]`: its
  standard settings, 9 target classes, 5,000 queries; it also attacks only the points it
  classifies correctly);
* AutoAttack standard: siriib_jax `AutoAttack` (cold: with compilation; and warm: a second
  call) against `pyautoattack.AutoAttack(version='standard')`, the official code.

Reported: wall time, the ratio siriib_jax / PyTorch, robust accuracy of each. JAX runs with
XLA's Eigen convolutions, as `main.py` does (`siriib_jax/xla_cpu.py`).

    python bench/attacks.py --help
    python bench/attacks.py --n 500 --train-steps 800
    python bench/attacks.py --n 500 --params /tmp/cnn800.msgpack --components apgd-t,fab-t,square

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
from siriib_jax.attacks import AutoAttack, fgsm, get_attack  # pylint: disable=wrong-import-position
from siriib_jax.models.conv import conv_general_dilated  # pylint: disable=wrong-import-position
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
                 help="comma list of batch sizes: time the forward pass alone at each "
                      "(both frameworks, alternated) and stop")
  p.add_argument("--json", default="")
  return p.parse_args(argv)


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
  """n indices, n / 10 per class, drawn at random with `seed`."""
  rng = np.random.RandomState(seed)
  classes = np.unique(labels)
  per_class = n // len(classes)
  idx = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]
  return np.sort(np.concatenate(idx))


def train(steps: int, seed: int):
  """FGSM-AT of `SmallCNN` on CIFAR-10 train: Adam 1e-3, batch 128. Returns params."""
  images, labels = cifar.load("cifar10", "train")
  model = SmallCNN()
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)))["params"]
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)
  attack = fgsm(EPS, step_size=1.25 * EPS, random_start=True)

  @jax.jit
  def step(params, opt_state, x, y, key):
    x = x.astype(jnp.float32) / 255.0
    logits_fn = lambda v: model.apply({"params": params}, v)
    x_adv = jax.lax.stop_gradient(attack(logits_fn, x, y, key).x_adv)
    def loss_fn(p):
      logits = model.apply({"params": p}, x_adv)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.RandomState(seed)
  key = jax.random.PRNGKey(seed + 1)
  start = time.perf_counter()
  for i in range(steps):
    idx = rng.randint(0, len(images), 128)
    x = images[idx]
    flip = rng.rand(128) < 0.5
    x[flip] = x[flip, :, ::-1]
    params, opt_state, loss = step(params, opt_state, x, labels[idx].astype(np.int32),
                                   jax.random.fold_in(key, i))
  jax.block_until_ready(params)
  print(f"trained {steps} FGSM-AT steps in {time.perf_counter() - start:.0f} s, last loss "
        f"{float(loss):.3f}", flush=True)
  return model, params


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


def time_forward(apply_fn, params, torch_model, x: np.ndarray, repeats: int = 5,
                 calls: int = 10) -> dict:
  """Median seconds of one forward pass of (B, 32, 32, 3) `x` in JAX (jitted) and PyTorch
  (no_grad), `repeats` alternated rounds of `calls` passes each."""
  x_t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  jax.block_until_ready(apply_fn(params, x))
  times = {"jax": [], "torch": []}
  with torch.no_grad():
    torch_model(x_t)
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(calls):
        jax.block_until_ready(apply_fn(params, x))
      times["jax"].append((time.perf_counter() - start) / calls)
      start = time.perf_counter()
      for _ in range(calls):
        torch_model(x_t)
      times["torch"].append((time.perf_counter() - start) / calls)
  return {name: float(np.median(t)) for name, t in times.items()}


def time_component(name: str, model, params, torch_model, x_np, y_np, x_t, y_t,
                   seed: int) -> dict:
  """One AutoAttack component alone: siriib_jax's evaluation (compilation included, as a
  user's `--mode=eval` with that one attack pays it) against pyautoattack's, on the same
  points. Returns seconds and robust accuracy of each."""
  import pyautoattack  # pylint: disable=import-outside-toplevel
  from siriib_jax.configs import default  # pylint: disable=import-outside-toplevel
  from siriib_jax.evaluation import evaluate_robustness  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  config.evaluation.batch_size = len(y_np)  # One chunk, as pyautoattack's bs = n below.
  config.evaluation.seed = seed
  config.evaluation.checklist.large_eps = 0.0  # The attack alone.
  start = time.perf_counter()
  report = evaluate_robustness(model, {"params": params}, config, (x_np, y_np),
                               attacks=(name,))
  result = {"jax_s": time.perf_counter() - start, "robust_jax": report.rows[-1].accuracy}
  adversary = pyautoattack.AutoAttack(torch_model, eps=EPS, norm="Linf", version="standard",
                                      seed=seed, device="cpu")
  adversary.attacks_to_run = [name]
  start = time.perf_counter()
  x_adv, _ = adversary.run_standard_evaluation(x_t, y_t, batch_size=len(y_np))
  result["torch_s"] = time.perf_counter() - start
  with torch.no_grad():
    result["robust_torch"] = float((torch_model(x_adv).argmax(-1) == y_t).float().mean())
  return result


def _load():
  with open("/proc/loadavg") as f:
    return " ".join(f.read().split()[:3])


def main(argv=None):
  args = _parse_args(argv)
  out = {"n": args.n, "seed": args.seed, "load_start": _load(),
         "torch_threads": torch.get_num_threads()}
  if args.params and os.path.exists(args.params):
    model = SmallCNN()
    template = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    with open(args.params, "rb") as f:
      params = flax.serialization.from_bytes(template, f.read())
  else:
    model, params = train(args.train_steps, args.seed)
    if args.params:
      with open(args.params, "wb") as f:
        f.write(flax.serialization.to_bytes(params))
  images, labels = cifar.load("cifar10", "test")
  idx = stratified_subset(labels, args.n, args.seed)
  x_np = images[idx].astype(np.float32) / 255.0
  y_np = labels[idx].astype(np.int32)
  torch_model = TorchSmallCNN()
  load_flax_variables(torch_model, {"params": params})
  torch_model.eval()
  x_t = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous()
  y_t = torch.from_numpy(y_np).long()
  apply_fn = jax.jit(lambda p, v: model.apply({"params": p}, v))
  logits_j = np.asarray(apply_fn(params, x_np))
  with torch.no_grad():
    logits_t = torch_model(x_t).numpy()
  out["logits_max_abs_diff"] = float(np.abs(logits_j - logits_t).max())
  assert out["logits_max_abs_diff"] < 1e-4, out["logits_max_abs_diff"]
  out["clean_acc_jax"] = float((logits_j.argmax(-1) == y_np).mean())
  out["clean_acc_torch"] = float((logits_t.argmax(-1) == y_np).mean())
  print(json.dumps(out), flush=True)

  if args.forward_batches:
    for batch in map(int, args.forward_batches.split(",")):
      x_batch = np.resize(x_np, (batch,) + x_np.shape[1:])
      seconds = time_forward(apply_fn, params, torch_model, x_batch)
      out[f"forward_{batch}"] = {**seconds, "ratio": seconds["jax"] / seconds["torch"]}
    _finish(out, args.json)
    return

  if args.components:
    for name in args.components.split(","):
      out[name] = time_component(name, model, params, torch_model, x_np, y_np, x_t, y_t,
                                 args.seed)
      out[name]["ratio"] = out[name]["jax_s"] / out[name]["torch_s"]
      print(json.dumps(out), flush=True)
    _finish(out, args.json)
    return

  # PGD-20.
  pgd20 = get_attack("pgd20", EPS, step_size=2 / 255)
  logits_fn = jax.tree_util.Partial(apply_fn, params)
  run = jax.jit(lambda x, y, key: pgd20(logits_fn, x, y, key))
  key = jax.random.PRNGKey(args.seed)
  start = time.perf_counter()
  compiled = run.lower(x_np, y_np, key).compile()
  out["pgd20_jax_compile_s"] = time.perf_counter() - start
  for rep in range(2):  # Alternated, twice.
    start = time.perf_counter()
    result = compiled(x_np, y_np, key)
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
