"""Times siriib_jax's adversarial train step against a PyTorch eager reference, alternated.

For each model (ResNet-18, ResNet-18-SR) and mode (PGD-10 adversarial training, plain clean
training) it builds the product's `make_train_step` (jitted, state donated) and
`bench/torch_reference.TrainStep`, runs one warm-up step of each, then alternates
JAX, PyTorch, JAX, PyTorch, … for `--repeats` steps each on one batch of real CIFAR-10
training images. Reported: median step time of each, the ratio siriib_jax / PyTorch,
JAX's compile time (lower + compile), and memory: the peak process RSS above the RSS
before the step (sampled every 5 ms in a thread; both frameworks share the process, so it
is each step's own working-set growth), plus XLA's own temp + output buffer sizes.

    python bench/train_step.py --help
    python bench/train_step.py --batch-size 128 --repeats 3 --models resnet18,resnet18_sr \
        --modes pgd10,plain

The JAX side runs with XLA's Eigen convolutions, as `main.py` does (`siriib_jax/xla_cpu.py`);
`--ynnpack` keeps XLA's default YNNPACK convolutions instead.
`--xla-flags` is appended to XLA_FLAGS before jax is imported; `--half-precision` runs the
JAX step in bf16 (config.half_precision, float32 parameters; PyTorch stays float32).
Needs torch (bench/requirements.txt) and ../shared/data (CIFAR-10 pixels).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--repeats", type=int, default=3, help="timed steps per framework")
  p.add_argument("--models", default="resnet18,resnet18_sr",
                 help="comma list of resnet18, resnet18_sr")
  p.add_argument("--modes", default="pgd10,plain", help="comma list of pgd10, plain")
  p.add_argument("--attack-steps", type=int, default=10, help="PGD steps of mode pgd10")
  p.add_argument("--frameworks", default="jax,torch", help="comma list of jax, torch")
  p.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS")
  p.add_argument("--ynnpack", action="store_true",
                 help="XLA's default YNNPACK convolutions, not main.py's Eigen ones")
  p.add_argument("--half-precision", action="store_true", help="bf16 compute in JAX")
  p.add_argument("--no-unroll", action="store_true", help="config.attack.unroll = False")
  p.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
  p.add_argument("--json", default="", help="also write the results here")
  return p.parse_args(argv)


class RssPeak:
  """Peak resident set size (bytes) above the level at entry, sampled in a thread."""

  def __init__(self, interval: float = 0.005):
    self.interval = interval
    self.peak = 0

  @staticmethod
  def rss() -> int:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, self.rss() - self.base)
      time.sleep(self.interval)

  def __enter__(self):
    self.base, self.peak = self.rss(), 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, self.rss() - self.base)


def _batch(batch_size: int):
  sys.path.insert(0, os.path.join(ROOT, "..", "shared", "data"))
  import cifar  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  images, labels = cifar.load("cifar10", "train")
  idx = np.random.RandomState(0).choice(len(images), batch_size, replace=False)
  return images[idx], labels[idx].astype(np.int32)


def _jax_step(model_name, mode, args, images, labels):
  """(compiled step, state, batch, key, compile seconds, XLA buffer bytes)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from siriib_jax.configs.default import get_config  # pylint: disable=import-outside-toplevel
  from siriib_jax.training import strategies  # pylint: disable=import-outside-toplevel
  from siriib_jax.models import create_model  # pylint: disable=import-outside-toplevel
  from siriib_jax.training.state import create_train_state  # pylint: disable=import-outside-toplevel
  from siriib_jax.training.step import make_train_step  # pylint: disable=import-outside-toplevel

  config = get_config()
  config.model.siriib.enabled = model_name == "resnet18_sr"
  config.attack.steps = args.attack_steps
  config.half_precision = args.half_precision
  if args.no_unroll:
    config.attack.unroll = False
  config.batch_size = args.batch_size
  model = create_model(config.model, 32, jnp.bfloat16 if args.half_precision else jnp.float32)
  strategy = strategies.get_strategy(config)
  if mode == "plain":  # The same step with the identity as its inner "attack".
    strategy = strategies.Strategy(lambda logits_fn, x, y, key, clean: x, strategy.loss)
  state = create_train_state(model, config, jax.random.PRNGKey(0), (32, 32, 3), 390, 50000)
  step = jax.jit(make_train_step(model, strategy, config, 390), donate_argnums=0)
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels),
           "index": jnp.arange(len(labels))}
  key = jax.random.PRNGKey(1)
  start = time.perf_counter()
  compiled = step.lower(state, batch, key).compile()
  compile_s = time.perf_counter() - start
  xla_bytes = None
  try:
    m = compiled.memory_analysis()
    xla_bytes = m.temp_size_in_bytes + m.output_size_in_bytes
  except Exception:  # pylint: disable=broad-except
    pass
  return compiled, state, batch, key, compile_s, xla_bytes


def _torch_step(model_name, mode, args, images, labels):
  import torch  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_reference as ref  # pylint: disable=import-outside-toplevel
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  torch.manual_seed(0)
  model = ref.Classifier(siriib=model_name == "resnet18_sr")
  step = ref.TrainStep(model, attack_steps=args.attack_steps if mode == "pgd10" else 0)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(labels).long()
  return lambda: step(x, y)


def _machine():
  out = {}
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    out["cpu"] = next(l.split(":", 1)[1].strip() for l in lscpu.splitlines()
                      if l.startswith("Model name"))
  except Exception:  # pylint: disable=broad-except
    out["cpu"] = "?"
  out["cores"] = os.cpu_count()
  return out


def _load():
  with open("/proc/loadavg") as f:
    return " ".join(f.read().split()[:3])


def main(argv=None):
  args = _parse_args(argv)
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  sys.path.insert(0, ROOT)
  if not args.ynnpack:
    from siriib_jax.xla_cpu import use_eigen_convolutions  # pylint: disable=import-outside-toplevel
    use_eigen_convolutions()
  import jax  # pylint: disable=import-outside-toplevel
  frameworks = args.frameworks.split(",")
  images, labels = _batch(args.batch_size)
  results = []
  print(f"machine {_machine()} jax {jax.__version__} XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r} bf16={args.half_precision} "
        f"batch {args.batch_size} load {_load()}", flush=True)
  for model_name in args.models.split(","):
    for mode in args.modes.split(","):
      row = {"model": model_name, "mode": mode, "load_start": _load()}
      runners = {}
      if "jax" in frameworks:
        compiled, state, batch, key, row["jax_compile_s"], row["jax_xla_bytes"] = _jax_step(
            model_name, mode, args, images, labels)
        holder = {"state": state}

        def run_jax(compiled=compiled, batch=batch, key=key, holder=holder):
          holder["state"], metrics = compiled(holder["state"], batch, key)
          jax.block_until_ready(metrics)
          return float(metrics["loss"])
        runners["jax"] = run_jax
      if "torch" in frameworks:
        runners["torch"] = _torch_step(model_name, mode, args, images, labels)
      times = {name: [] for name in runners}
      rss = {name: 0 for name in runners}
      for name, run in runners.items():  # Warm-up.
        start = time.perf_counter()
        with RssPeak() as peak:
          run()
        rss[name] = peak.peak
        row[f"{name}_first_s"] = time.perf_counter() - start
      for _ in range(args.repeats):
        for name, run in runners.items():
          with RssPeak() as peak:
            start = time.perf_counter()
            loss = run()
            times[name].append(time.perf_counter() - start)
          rss[name] = max(rss[name], peak.peak)
          row[f"{name}_loss"] = loss
      for name in runners:
        row[f"{name}_median_s"] = statistics.median(times[name])
        row[f"{name}_times_s"] = [round(t, 3) for t in times[name]]
        row[f"{name}_peak_rss_mib"] = rss[name] / 2**20
      if len(runners) == 2:
        row["ratio_jax_over_torch"] = row["jax_median_s"] / row["torch_median_s"]
      row["load_end"] = _load()
      results.append(row)
      print(json.dumps(row), flush=True)
  print("\n| model | mode | JAX median s | PyTorch median s | ratio JAX/PyTorch | JAX compile s "
        "| peak RSS JAX / PyTorch MiB | XLA buffers MiB | load start → end |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in results:
    fmt = lambda k, f="{:.2f}": f.format(r[k]) if r.get(k) is not None else "—"
    xla = f"{r['jax_xla_bytes'] / 2**20:.0f}" if r.get("jax_xla_bytes") else "—"
    print(f"| {r['model']} | {r['mode']} | {fmt('jax_median_s')} | {fmt('torch_median_s')} | "
          f"{fmt('ratio_jax_over_torch')} | {fmt('jax_compile_s', '{:.1f}')} | "
          f"{fmt('jax_peak_rss_mib', '{:.0f}')} / {fmt('torch_peak_rss_mib', '{:.0f}')} | "
          f"{xla} | {r['load_start']} → {r['load_end']} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
