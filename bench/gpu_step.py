"""The PGD-10 adversarial train step on one GPU: siriib_jax against the PyTorch reference.

Issue 5, item 3: the bf16 PGD-10 step, its model FLOP utilisation (MFU) and the time of a
CIFAR-10 epoch, with the PyTorch eager reference (`bench/torch_reference.py`, CUDA, bf16
autocast, cuDNN autotuning on) timed in the same process, alternated with JAX step by step.

Each variant (model, precision, batch size, PGD loop form) builds the product's jitted,
state-donating step exactly as `bench/train_step.py` does, warms both frameworks up, then
times `--repeats` steps of each, alternated; every step ends with the device synchronised
(JAX: `block_until_ready`; PyTorch: the loss read back). Reported: the median, the ratio
siriib_jax / PyTorch, JAX's compile time, XLA's buffer bytes and PyTorch's peak allocation.

MFU = model FLOPs / step time / peak. Model FLOPs of one PGD-k step are
2 · MACs · B · (2k + 3): k attack steps of a forward pass and an input gradient (≈ one
forward each; no weight gradient), then the training forward and backward (≈ three
forwards). MACs are `siriib_jax.complexity`'s (the paper's Table 3 count: convolutions and
dense layers). For ResNet-18-SR this leaves out its extra clean pass and the FFT/SVD work,
so its MFU is a lower bound. The peak is both the datasheet's dense bf16 rate
(`--peak-tflops`, 989 for an H100/H200 SXM) and a bf16 8192³ matrix product measured in
this run.

The epoch: the product's `InputPipeline` over a synthetic CIFAR-10-shaped npz dataset
(50,000 random uint8 training images written to a temporary folder on the device; no real
pixels travel there; 1,000 held out for validation as in the default config) feeding the
variant's compiled step for one whole epoch, timed from the first batch to the last state
on the device. Validation and checkpointing, which `train.py` adds at the end of an epoch,
are not included. Images are random, never zeros.

    python bench/gpu_step.py --help
    python bench/gpu_step.py --variants resnet18:bf16:128,resnet18_sr:bf16:128 \
        --epoch resnet18_sr:bf16:128 --json /tmp/gpu.json

A variant is `model:precision:batch[:option…]` (precision bf16 or fp32). Options: `unroll`
keeps the default config's unrolled PGD loop (otherwise the loop is rolled); `compile` runs
the PyTorch reference's model through `torch.compile` (default mode; the attack loop, the
losses and the optimiser stay eager, as a researcher would add it to existing code), its
compilation inside the warm-up steps. `--profile DIR` traces `--profile-steps` JAX steps of
each variant after its timing (`jax.profiler`, a Perfetto trace per variant) for
`bench/kernel_profile.py`. (At commit 5571fb5 two
more options, `laxgrad` and `sr32`, compared what the product has done on a GPU since
a6b920e: XLA's own convolution gradients and the SiRIIB branch in float32.) Needs torch
with CUDA (without it, `--frameworks jax`); does not read ../shared.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_step import _jax_step  # pylint: disable=wrong-import-position


def _parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--variants", default="resnet18:bf16:128,resnet18_sr:bf16:128,"
                 "resnet18:fp32:128,resnet18:bf16:512,resnet18:bf16:128:unroll",
                 help="comma list of model:precision:batch[:unroll]")
  p.add_argument("--epoch", default="resnet18_sr:bf16:128",
                 help="comma list of variants (of --variants) to time a whole epoch with")
  p.add_argument("--repeats", type=int, default=10, help="timed steps per framework")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps per framework")
  p.add_argument("--attack-steps", type=int, default=10)
  p.add_argument("--frameworks", default="jax,torch", help="comma list of jax, torch")
  p.add_argument("--peak-tflops", type=float, default=989.0,
                 help="datasheet dense bf16 TFLOP/s of the GPU (H100/H200 SXM: 989)")
  p.add_argument("--train-size", type=int, default=50000, help="epoch: training images")
  p.add_argument("--matmul-size", type=int, default=8192, help="n of the measured n³ peak")
  p.add_argument("--torch-device", default="cuda", help="cuda; cpu to try the script out")
  p.add_argument("--json", default="", help="append one JSON line per result here")
  p.add_argument("--profile", default="", help="trace JAX steps of each variant under DIR")
  p.add_argument("--profile-steps", type=int, default=3, help="steps per profiled variant")
  return p.parse_args(argv)


def _emit(args, row):
  print(json.dumps(row), flush=True)
  if args.json:
    with open(args.json, "a") as f:
      f.write(json.dumps(row) + "\n")


def _random_batch(batch_size: int, seed: int = 0):
  rng = np.random.RandomState(seed)
  return (rng.randint(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8),
          rng.randint(0, 10, batch_size).astype(np.int32))


def _measured_bf16_tflops(n: int, repeats: int = 5, products: int = 20) -> float:
  """TFLOP/s of a bf16 n³ matrix product through XLA: the median over `repeats` of
  `products` back-to-back products, after 5 such rounds of warm-up (clocks ramp up)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  keys = jax.random.split(jax.random.key(0), 2)
  a, b = (jax.random.normal(k, (n, n), jnp.bfloat16) for k in keys)
  matmul = jax.jit(lambda a, b: a @ b)
  times = []
  for _ in range(5 + repeats):
    start = time.perf_counter()
    jax.block_until_ready([matmul(a, b) for _ in range(products)])
    times.append((time.perf_counter() - start) / products)
  return 2 * n**3 / statistics.median(times[5:]) / 1e12


def _macs(model_name: str) -> int:
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from siriib_jax.configs.default import get_config  # pylint: disable=import-outside-toplevel
  from siriib_jax.complexity import count_complexity  # pylint: disable=import-outside-toplevel
  from siriib_jax.models import create_model  # pylint: disable=import-outside-toplevel
  config = get_config()
  config.model.siriib.enabled = model_name == "resnet18_sr"
  return count_complexity(create_model(config.model, 32, jnp.float32), 32).macs


def _torch_runner(model_name, bf16, attack_steps, images, labels, device, compile_model):
  """(step function returning the loss, peak-allocation reader or None)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch_reference as ref  # pylint: disable=import-outside-toplevel
  torch.backends.cudnn.benchmark = True
  torch.manual_seed(0)
  device = torch.device(device)
  model = ref.Classifier(siriib=model_name == "resnet18_sr").to(device)
  if compile_model:
    model.compile()
  step = ref.TrainStep(model, attack_steps=attack_steps, bf16=bf16)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
  y = torch.from_numpy(labels).long().to(device)
  if device.type != "cuda":
    return (lambda: step(x, y)), None
  torch.cuda.reset_peak_memory_stats()
  return (lambda: step(x, y)), torch.cuda.max_memory_allocated


def _epoch(compiled, state, key, batch_size: int, train_size: int):
  """One epoch of the product's input pipeline into `compiled` (which donates `state`):
  (seconds, steps, summary of the step metrics: loss first / last / max, R_τ max,
  non-finite (skipped) steps)."""
  import jax  # pylint: disable=import-outside-toplevel
  from siriib_jax.configs.default import get_config  # pylint: disable=import-outside-toplevel
  from siriib_jax.data import InputPipeline  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as folder:
    for split, n in (("train", train_size), ("test", 1000)):
      image, label = _random_batch(n, seed=1 if split == "train" else 2)
      np.savez(os.path.join(folder, f"{split}.npz"), image=image, label=label)
    dataset = get_config().dataset
    dataset.name, dataset.data_dir = "npz", folder
    data = InputPipeline(dataset, global_batch_size=batch_size, seed=0)
    data.train_batch(0)  # Reads the arrays before the clock starts.
    start = time.perf_counter()
    history = []
    for step in range(data.steps_per_epoch):
      batch = jax.device_put(data.train_batch(step))
      state, metrics = compiled(state, batch, key)
      history.append(metrics)
    jax.block_until_ready((state, history))
    seconds = time.perf_counter() - start
  history = jax.device_get(history)
  loss = np.array([m["loss"] for m in history])
  summary = {"loss_first": float(loss[0]), "loss_last": float(loss[-1]),
             "loss_max": float(np.max(loss)),
             "skipped_steps": int(sum(m["finite"] < 1 for m in history))}
  if "r_tau" in history[0]:
    summary["r_tau_max"] = float(max(m["r_tau"] for m in history))
  return seconds, data.steps_per_epoch, summary


def _profile(run, steps: int, directory: str) -> str:
  """Traces `steps` calls of `run` (each ends synchronised) into `directory`."""
  import jax  # pylint: disable=import-outside-toplevel
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    for _ in range(steps):
      run()
  return directory


def main(argv=None):
  args = _parse_args(argv)
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")  # Leave PyTorch room.
  import jax  # pylint: disable=import-outside-toplevel
  frameworks = args.frameworks.split(",")
  info = {"jax": jax.__version__, "devices": [d.device_kind for d in jax.devices()],
          "backend": jax.default_backend()}
  if "torch" in frameworks:
    import torch  # pylint: disable=import-outside-toplevel
    info.update(torch=torch.__version__, torch_device=(
        torch.cuda.get_device_name(0) if args.torch_device == "cuda" else args.torch_device))
  info["measured_bf16_matmul_tflops"] = _measured_bf16_tflops(args.matmul_size)
  _emit(args, {"info": info})
  macs = {}
  summary = []
  for variant in args.variants.split(","):
    try:
      row = _variant(args, variant, info, frameworks, macs)
    except Exception as e:  # pylint: disable=broad-except  (the other variants still run)
      row = {"variant": variant, "error": traceback.format_exc()[-3000:]}
      print(f"{variant} failed: {e!r}", flush=True)
    _emit(args, row)
    summary.append(row)
  _print_table(info, summary)


def _variant(args, variant, info, frameworks, macs) -> dict:
  """Times one variant (and its epoch, if --epoch names it)."""
  model_name, precision, batch_size, *options = variant.split(":")
  batch_size, bf16 = int(batch_size), precision == "bf16"
  if (model_name not in ("resnet18", "resnet18_sr") or precision not in ("bf16", "fp32")
      or not set(options) <= {"unroll", "compile"}):
    raise ValueError(f"{variant!r}: expected (resnet18|resnet18_sr):(bf16|fp32):batch"
                     "[:unroll][:compile]")
  if model_name not in macs:
    macs[model_name] = _macs(model_name)
  images, labels = _random_batch(batch_size)
  row = {"variant": variant}
  runners = {}
  if "jax" in frameworks:
    step_args = argparse.Namespace(attack_steps=args.attack_steps, half_precision=bf16,
                                   no_unroll="unroll" not in options, batch_size=batch_size)
    compiled, state, batch, key, row["jax_compile_s"], row["jax_xla_bytes"] = _jax_step(
        model_name, "pgd10", step_args, images, labels)
    holder = {"state": state}

    def run_jax(compiled=compiled, batch=batch, key=key, holder=holder):
      holder["state"], metrics = compiled(holder["state"], batch, key)
      return float(metrics["loss"])
    runners["jax"] = run_jax
  if "torch" in frameworks:
    runners["torch"], torch_peak = _torch_runner(model_name, bf16, args.attack_steps, images,
                                                 labels, args.torch_device,
                                                 "compile" in options)
  times = {name: [] for name in runners}
  for name, run in runners.items():
    start = time.perf_counter()
    for _ in range(args.warmup):
      row[f"{name}_loss_warmup"] = run()
    row[f"{name}_warmup_s"] = time.perf_counter() - start
  for _ in range(args.repeats):
    for name, run in runners.items():
      start = time.perf_counter()
      row[f"{name}_loss"] = run()
      times[name].append(time.perf_counter() - start)
  flops = 2 * macs[model_name] * batch_size * (2 * args.attack_steps + 3)
  row["model_gflop"] = flops / 1e9
  for name in runners:
    median = statistics.median(times[name])
    row[f"{name}_median_ms"] = 1e3 * median
    row[f"{name}_times_ms"] = [round(1e3 * t, 2) for t in times[name]]
    row[f"{name}_tflops"] = flops / median / 1e12
    row[f"{name}_mfu_datasheet"] = row[f"{name}_tflops"] / args.peak_tflops
    row[f"{name}_mfu_measured_peak"] = row[f"{name}_tflops"] / info[
        "measured_bf16_matmul_tflops"]
  if "torch" in runners and torch_peak is not None:
    row["torch_peak_mib"] = torch_peak() / 2**20
  if len(runners) == 2:
    row["ratio_jax_over_torch"] = row["jax_median_ms"] / row["torch_median_ms"]
  if args.profile and "jax" in runners:
    row["profile_dir"] = _profile(runners["jax"], args.profile_steps,
                                  os.path.join(args.profile, variant.replace(":", "_")))
  if variant in args.epoch.split(",") and "jax" in runners:
    row["epoch_s"], row["epoch_steps"], row["epoch_metrics"] = _epoch(
        compiled, holder["state"], key, batch_size, args.train_size)
  return row


def _print_table(info, summary):
  print(f"\n{info}\n\n| variant | JAX ms | PyTorch ms | JAX / PyTorch | JAX TFLOP/s | "
        "JAX MFU (datasheet / measured peak) | PyTorch MFU (datasheet) | JAX compile s | "
        "epoch s (steps) |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in summary:
    fmt = lambda k, f="{:.1f}": f.format(r[k]) if r.get(k) is not None else "—"
    print(f"| {r['variant']} | {fmt('jax_median_ms')} | {fmt('torch_median_ms')} | "
          f"{fmt('ratio_jax_over_torch', '{:.2f}')} | {fmt('jax_tflops')} | "
          f"{fmt('jax_mfu_datasheet', '{:.1%}')} / {fmt('jax_mfu_measured_peak', '{:.1%}')} | "
          f"{fmt('torch_mfu_datasheet', '{:.1%}')} | {fmt('jax_compile_s')} | "
          f"{fmt('epoch_s')} ({r.get('epoch_steps', '—')}) |")


if __name__ == "__main__":
  main()
