"""AutoAttack standard on one GPU: siriib_jax against the official code, same weights and points.

Within one 8-minute call of the device tool (one GPU), in one process:

1. `train`: a ResNet-18 without SiRIIB trained briefly with this project
   (`train_and_evaluate`; PGD-AT, PGD-10 inner attack, L∞ ε = 8/255, α = 2/255; `--epochs`,
   default 2, batch 128; bf16 compute on an accelerator, `config.half_precision`; everything
   else as `configs/cifar10_r18.py`) on the packed CIFAR-10, whose **training pixels are
   JPEG quality 92** (`python ../shared/data/cifar.py pack .gpu_data`; the test pixels are
   lossless);
2. `export`: its best checkpoint (validation PGD-20) written in PyTorch's naming and layout
   by this project's `--mode=export` code (`siriib_jax.export.run(config, workdir)`);
3. `siriib_jax`: AutoAttack standard (L∞ 8/255: APGD-CE, APGD-T, FAB-T, Square with 5,000
   queries) through `siriib_jax.evaluate.evaluate('eval', config, workdir)` on the
   checkpoint, with `evaluation.attacks = ('clean', 'autoattack')`, a stratified subset of
   `--n` (default 1,000) test points drawn by `siriib_jax.data.splits.stratified_subset`
   with `evaluation.seed` 0, one chunk of `--n` points, and `evaluation.save_examples` (the
   per-point robust flags, `workdir/evaluation_cold/autoattack.npz`). The evaluation runs
   in float32 (`half_precision` off; `--eval_dtype bfloat16` keeps the training's bf16)
   so that both frameworks compute in the same precision;
4. `official`: the official AutoAttack code (`pyautoattack` 0.2.0, Croce & Hein 2020,
   `version='standard'`, `seed` 0, `batch_size` = `--n`) on the export loaded into this
   project's PyTorch reference model (`bench/torch_reference.build_model`,
   `load_state_dict(strict=True)`, as bench/export_check.py does), on the same points (the
   same indices; contiguous NCHW float32 tensors on the GPU). Its seconds per component
   are read off its own log (the time between its `running <attack>` and `robust accuracy
   after <attack>` lines, each of which follows a GPU synchronisation); its set-up (its
   model checks and clean pass) is reported apart. Before it, the logits of the export in
   PyTorch and of the checkpoint in JAX on the points are compared (this also warms PyTorch
   up);
5. `warm`: the same siriib_jax evaluation a second time in the process, skipped when the
   first one's time no longer fits in `--budget_s`.

Reported (`--results/results.json`, rewritten after every phase, and a Markdown table at
the end): seconds of each component for both (siriib_jax's from its report's AutoAttack
cascade, compilation included), robust accuracy of both, and per-point agreement of their
robust flags (`--results/flags.npz` holds the flags, the test indices and the labels).
Compilation is reported apart: the first siriib_jax call compiles, the second compiles
only what JAX's in-process caches do not already hold; in both, JAX's own compile-time events (`jax.monitoring`, backend compile
seconds and the number of programs compiled) are summed. JAX's persistent compilation
cache is left as the environment has it (off unless `JAX_COMPILATION_CACHE_DIR` is set).
JAX is told to take at most half of the GPU's memory (`XLA_PYTHON_CLIENT_MEM_FRACTION`,
unless set) so that PyTorch has the rest.

Phases run in the order that keeps the most if the call's time runs out (the training and
the siriib_jax evaluation first; the official code after; the second call last);
`--phases` runs some of them again on an earlier `--out` (e.g. `official` alone, with the
training and export already there).

On the device tool's machine (its image has jax with CUDA, flax, optax, orbax, chex,
safetensors and PyTorch, but not ml-collections, clu, TensorFlow or pyautoattack), carry the
missing pure-Python wheels, fetched here once into the ignored folder `.whl`. pyautoattack's
wheel is 42 MB, 44.8 of them an example model (`pyautoattack/examples/model_test.pt`), and
the working tree that travels is limited to 64 MiB with the 47 MiB `.gpu_data`: drop the
examples from the wheel (pip installs it without them):

    python ../shared/data/cifar.py pack .gpu_data     # here, once (.gpu_data is ignored)
    pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0 clu==0.0.12
    pip download --no-deps pyautoattack==0.2.0 -d .whl
    zip -q -d .whl/pyautoattack-0.2.0-py3-none-any.whl 'pyautoattack/examples/*'
    # device command, carry [".gpu_data", ".whl"], timeout_s 480:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; \
      set -o pipefail; PYTHONUNBUFFERED=1 python3 bench/gpu_autoattack.py --data .gpu_data \
      --out /tmp/gaa --results $OUT 2>&1 | tee $OUT/log

PyTorch cannot be carried (gigabytes): it must come from the device image (its plain
`python3` holds torch 2.11 with CUDA). Where `import torch` or `import pyautoattack` fails,
the `official` phase is skipped with a message saying so, and only this project's side is
recorded.

`--toy` shrinks everything (width 1/8, 512 training images, 1 epoch of batch 32, PGD-1
training and validation, 40 test points, 50 Square queries on both sides, PyTorch on one
thread, the second call whatever `--budget_s`) to check the script on a CPU in a few
minutes; its numbers mean nothing:

    python bench/gpu_autoattack.py --data .gpu_data --out /tmp/gaa --toy

Needs torch and pyautoattack (bench/requirements.txt) for the official side.
"""

import argparse
import json
import logging
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")  # Before JAX starts.

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# Its import stands in for clu's TensorBoard writer where TensorFlow is missing and runs
# `configure_process()` before JAX initialises its backends.
import gpu_reproduce
import jax
from absl import logging as absl_logging

from siriib_jax import export
from siriib_jax.data.splits import stratified_subset
from siriib_jax.evaluate import evaluate
from siriib_jax.train import train_and_evaluate

EPS = 8 / 255
COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")
PHASES = ("train", "export", "siriib_jax", "official", "warm")


def _parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", type=pathlib.Path, required=True,
                 help="a folder with cifar.py: .gpu_data (packed) or ../shared/data")
  p.add_argument("--out", type=pathlib.Path, required=True,
                 help="working folder (data, checkpoints, export, evaluation reports)")
  p.add_argument("--results", type=pathlib.Path, default=None,
                 help="where results.json and flags.npz go (default --out)")
  p.add_argument("--n", type=int, default=1000, help="stratified test points")
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--eval_dtype", choices=("float32", "bfloat16"), default="float32",
                 help="siriib_jax's evaluation precision (the official code runs float32)")
  p.add_argument("--phases", default=",".join(PHASES),
                 help=f"comma list of {', '.join(PHASES)}; a phase left out reads what an "
                      "earlier call left in --out")
  p.add_argument("--budget_s", type=float, default=420.0,
                 help="the second siriib_jax call is skipped when it would end past this "
                      "many seconds after the start")
  p.add_argument("--torch_threads", type=int, default=0,
                 help="torch.set_num_threads for the official side (0: torch's default)")
  p.add_argument("--toy", action="store_true", help="a few-minute CPU check of the script")
  args = p.parse_args(argv)
  args.results = args.results or args.out
  phases = set(args.phases.split(","))
  if not phases <= set(PHASES):
    p.error(f"--phases: unknown {sorted(phases - set(PHASES))}; choose from {PHASES}")
  args.phases = phases
  if args.toy:
    args.epochs, args.batch_size, args.n = 1, 32, min(args.n, 40)
    args.torch_threads = args.torch_threads or 1  # Two threads on a busy 2-core CPU crawl.
    args.budget_s = float("inf")  # The second call runs, to check it.
  return args


class CompileClock:
  """Sums JAX's backend-compile events (`jax.monitoring`): seconds and programs compiled,
  from `start()` on."""

  EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    self.seconds, self.count, self.available = 0.0, 0, True
    try:
      jax.monitoring.register_event_duration_secs_listener(self._listen)
    except AttributeError:  # A JAX without the listener API: nothing is counted.
      self.available = False

  def _listen(self, event, duration, **unused_kwargs):
    if event == self.EVENT:
      self.seconds += duration
      self.count += 1

  def start(self):
    self.seconds, self.count = 0.0, 0

  def read(self) -> dict:
    if not self.available:
      return {"compile_seconds": None, "programs_compiled": None}
    return {"compile_seconds": round(self.seconds, 2), "programs_compiled": self.count}


class OfficialClock(logging.Handler):
  """Times each component of pyautoattack's `run_standard_evaluation` from its own log
  lines (logger `auto-attack`, DEBUG): `running <attack>` starts it, `robust accuracy
  after <ATTACK>: p%` (logged after a `.item()` that waits for the GPU) ends it; a
  component skipped because no point is left robust gets 0 s."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.seconds, self.robust_after, self._current, self._start = {}, {}, None, None

  def emit(self, record):
    now, message = time.perf_counter(), record.getMessage()
    started = re.match(r"running (\S+)$", message)
    ended = re.match(r"robust accuracy after (\S+): ([\d.]+)%", message)
    if started:
      self._current, self._start = started.group(1), now
    elif ended and self._current:
      self.seconds[self._current] = now - self._start
      self.robust_after[self._current] = float(ended.group(2)) / 100
      self._current = None
    elif message.startswith("no robust datapoints left") and self._current:
      self.seconds[self._current], self._current = 0.0, None


def _machine() -> dict:
  with open("/proc/cpuinfo") as f:
    cpu = next((line.split(":", 1)[1].strip() for line in f
                if line.startswith("model name")), platform.processor())
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip())
  except (OSError, subprocess.CalledProcessError):
    commit, dirty = None, None  # The device's copy of the tree has no .git.
  return {"backend": jax.default_backend(), "devices": [d.device_kind for d in jax.devices()],
          "cpu": cpu, "cpu_count": os.cpu_count(), "jax": jax.__version__,
          "python": platform.python_version(), "commit": commit, "uncommitted_changes": dirty,
          "xla_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
          "jax_compilation_cache_dir": getattr(jax.config, "jax_compilation_cache_dir", None)}


def eval_config(train_config, args):
  """The training config with this comparison's evaluation: clean and AutoAttack standard
  on `args.n` stratified test points (seed 0), one chunk, per-point flags saved."""
  config = train_config.copy_and_resolve_references()
  config.half_precision = args.eval_dtype == "bfloat16"
  config.evaluation.attacks = ("clean", "autoattack")
  config.evaluation.subset_size = args.n
  config.evaluation.batch_size = args.n  # As the official code's batch_size below.
  config.evaluation.save_examples = True
  config.evaluation.checklist.large_eps = 0.0  # AutoAttack alone.
  config.evaluation.checkpoint = "best"
  return config


def run_siriib_jax(config, workdir: pathlib.Path, kept: str, clock: CompileClock):
  """One `evaluate('eval', ...)` call; its folder is renamed `kept`. Returns (results,
  robust flags (N,) bool, clean predictions (N,), labels (N,), x_adv (N, H, W, C))."""
  clock.start()
  start = time.perf_counter()
  report = evaluate("eval", config, str(workdir))
  seconds = time.perf_counter() - start
  target = workdir / kept
  shutil.rmtree(target, ignore_errors=True)
  (workdir / "evaluation").rename(target)
  saved = np.load(target / "autoattack.npz")
  rows = {row.name: row for row in report.rows}
  cascade = report.autoattack.get("autoattack", {})
  result = {"seconds": round(seconds, 2), **clock.read(),
            "clean": rows["clean"].accuracy, "robust": rows["autoattack"].accuracy,
            "autoattack_row_seconds": round(rows["autoattack"].seconds, 2),
            "components": {name: {"seconds": round(part.get("seconds", float("nan")), 2),
                                  "attacked": part.get("attacked"),
                                  "broken": part.get("broken"),
                                  "robust_after": part.get("accuracy_after")}
                           for name, part in cascade.items()}}
  return (result, saved["robust"], saved["clean_prediction"], saved["label"],
          saved["x_adv"])


def run_official(export_dir: pathlib.Path, workdir: pathlib.Path, x: np.ndarray,
                 y: np.ndarray, seed: int, square_queries: int, threads: int = 0):
  """pyautoattack's standard version on the export (module doc, phase 4). Returns
  (results, robust flags (N,) bool, clean predictions (N,)); raises ImportError where
  torch or pyautoattack is missing."""
  import pyautoattack  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import torch_reference  # pylint: disable=import-outside-toplevel
  from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel

  from siriib_jax.checkpointing import load_variables  # pylint: disable=import-outside-toplevel
  from siriib_jax.models import create_model  # pylint: disable=import-outside-toplevel
  from siriib_jax.models.model_fn import logits_fn  # pylint: disable=import-outside-toplevel

  device = "cuda" if torch.cuda.is_available() else "cpu"
  if threads:
    torch.set_num_threads(threads)
  architecture = json.loads((export_dir / export.ARCHITECTURE_NAME).read_text())
  model = torch_reference.build_model(architecture)
  model.load_state_dict(load_file(str(export_dir / export.FILE_NAME)), strict=True)
  wrapped = torch_reference.LogitsOnly(model).eval().to(device)
  x_t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)
  y_t = torch.from_numpy(y.astype(np.int64)).to(device)
  result = {"torch": torch.__version__, "pyautoattack": getattr(pyautoattack, "__version__",
                                                                "0.2.0"),
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch_threads": torch.get_num_threads(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}

  # The same weights in both frameworks (float32 logits on the points); warms PyTorch up.
  jax_model = create_model(_model_block(architecture), architecture["image_size"])
  variables, step = load_variables(str(workdir), architecture["checkpoint"] or "best")
  fn, apply = logits_fn(jax_model, variables), jax.jit(lambda f, v: f(v))
  logits_j = np.concatenate([np.asarray(apply(fn, x[i:i + 500]))
                             for i in range(0, len(x), 500)])
  with torch.no_grad():
    logits_t = torch.cat([wrapped(x_t[i:i + 500]) for i in range(0, len(x), 500)]).cpu()
  logits_t = logits_t.numpy()
  result["logits_max_abs_diff"] = float(np.abs(logits_j - logits_t).max())
  result["logit_scale"] = float(np.abs(logits_j).max())
  result["argmax_agree"] = float((logits_j.argmax(-1) == logits_t.argmax(-1)).mean())
  result["export_step"], result["checkpoint_step"] = architecture["step"], int(step)

  clock = OfficialClock()
  aa_log = logging.getLogger("auto-attack")
  aa_log.setLevel(logging.DEBUG)
  aa_log.addHandler(clock)
  try:
    adversary = pyautoattack.AutoAttack(wrapped, norm="Linf", eps=EPS, version="standard",
                                        seed=seed, device=device)
    adversary.square.n_queries = square_queries
    if device == "cuda":
      torch.cuda.synchronize()
    start = time.perf_counter()
    _, y_adv = adversary.run_standard_evaluation(x_t, y_t, batch_size=len(x))
    if device == "cuda":
      torch.cuda.synchronize()
    seconds = time.perf_counter() - start
  finally:
    aa_log.removeHandler(clock)
  robust = (y_adv == y_t).cpu().numpy()
  with torch.no_grad():
    clean_prediction = wrapped(x_t).argmax(-1).cpu().numpy()
  result.update({
      "seconds": round(seconds, 2),
      "setup_seconds": round(seconds - sum(clock.seconds.values()), 2),
      "clean": float((clean_prediction == y).mean()), "robust": float(robust.mean()),
      "square_queries": adversary.square.n_queries,
      "components": {name: {"seconds": round(clock.seconds[name], 2),
                            "robust_after": clock.robust_after.get(name)}
                     for name in clock.seconds}})
  if device == "cuda":
    torch.cuda.empty_cache()  # Back to JAX for the second siriib_jax call.
  return result, robust, clean_prediction


def _model_block(architecture: dict):
  """`config.model` of an export's `architecture.json`, as a ConfigDict."""
  from siriib_jax.configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  config.model.update(architecture["model"])
  return config.model


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
  """Per-point agreement of two (N,) bool robust-flag arrays (a: siriib_jax, b: official)."""
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  return {"points": int(a.size), "same": int((a == b).sum()),
          "fraction": float((a == b).mean()) if a.size else 0.0,
          "robust_both": int((a & b).sum()), "robust_siriib_jax_only": int((a & ~b).sum()),
          "robust_official_only": int((~a & b).sum())}


def main(argv=None):
  args = _parse_args(argv)
  absl_logging.set_verbosity(absl_logging.INFO)  # The training log on stderr.
  started = time.time()
  args.out.mkdir(parents=True, exist_ok=True)
  args.results.mkdir(parents=True, exist_ok=True)
  path, flags_path = args.results / "results.json", args.results / "flags.npz"
  results = json.loads(path.read_text()) if path.exists() else {}
  flags = dict(np.load(flags_path)) if flags_path.exists() else {}
  data_dir, split = gpu_reproduce.write_npz(args.out, args.data, 512 if args.toy else 0)
  results["_run"] = {**_machine(), "train_split": split,
                     "train_pixels": "JPEG quality 92" if split == "train_q92" else "lossless",
                     "args": {k: sorted(v) if isinstance(v, set) else str(v)
                              for k, v in vars(args).items()},
                     "data_seconds": round(time.time() - started, 2)}

  def save():
    path.write_text(json.dumps(results, indent=1))
    np.savez(flags_path, **flags)

  def phase(name, run):
    start = time.time()
    value = run()
    results[name] = {**value, "phase_seconds": round(time.time() - start, 2)}
    save()
    print(f"[{time.time() - started:.0f} s] {name}: {json.dumps(results[name])}", flush=True)

  config = gpu_reproduce.make_config(args, data_dir, siriib=False)
  workdir = args.out / "resnet18"
  clock = CompileClock()

  def train():
    summary = train_and_evaluate(config, str(workdir))
    if summary["status"] != "completed":
      raise SystemExit(f"training {summary['status']}")
    return {"epochs": args.epochs, "best_validation_pgd": summary.get("best_validation_pgd"),
            "half_precision": bool(config.half_precision)}

  if "train" in args.phases:
    phase("train", train)
  elif not (workdir / "summary.json").exists():
    raise SystemExit(f"no training in {workdir} (summary.json); add train to --phases")
  if "export" in args.phases:
    phase("export", lambda: {k: str(v) for k, v in export.run(config, str(workdir)).items()})

  evaluation = eval_config(config, args)
  test = np.load(pathlib.Path(data_dir) / "test.npz")
  index = stratified_subset(test["label"], args.n, seed=evaluation.evaluation.seed)
  x = test["image"][index].astype(np.float32) / 255.0
  y = test["label"][index].astype(np.int32)
  flags.update(index=index, label=y)
  results["points"] = {"n": args.n, "seed": evaluation.evaluation.seed,
                       "selection": "siriib_jax.data.splits.stratified_subset of the test "
                                    "split, sorted indices",
                       "class_counts": np.bincount(y, minlength=10).tolist()}

  def siriib_jax_call(kept, key):
    def run():
      value, robust, clean_prediction, labels, x_adv = run_siriib_jax(evaluation, workdir,
                                                                       kept, clock)
      # The same points: labels, and x itself where no component moved it.
      value["same_points"] = bool(np.array_equal(labels, y) and np.array_equal(
          x_adv[robust], x[robust]))
      flags.update({f"{key}_robust": robust, f"{key}_clean_prediction": clean_prediction})
      return value
    return run

  if "siriib_jax" in args.phases:
    phase("siriib_jax", siriib_jax_call("evaluation_cold", "siriib_jax"))
  if "official" in args.phases:
    def official():
      try:
        value, robust, clean_prediction = run_official(
            workdir / "export", workdir, x, y, int(evaluation.evaluation.seed),
            int(evaluation.evaluation.square_queries), args.torch_threads)
      except ImportError as error:
        print(f"The official side is skipped: {error} (torch must come from the machine's "
              "image; pyautoattack can be carried as a wheel, module doc).", flush=True)
        return {"skipped": f"ImportError: {error}"}
      flags.update(official_robust=robust, official_clean_prediction=clean_prediction)
      if "siriib_jax_robust" in flags:
        value["agreement_robust"] = agreement(flags["siriib_jax_robust"], robust)
        value["agreement_clean_prediction"] = float(
            (flags["siriib_jax_clean_prediction"] == clean_prediction).mean())
      return value
    phase("official", official)
  if "warm" in args.phases:
    cold = results.get("siriib_jax", {}).get("seconds", 0.0)
    if time.time() - started + cold > args.budget_s:
      results["warm"] = {"skipped": f"{time.time() - started:.0f} s gone; the first call took "
                                    f"{cold:.0f} s, past --budget_s {args.budget_s:.0f}"}
      save()
    else:
      phase("warm", siriib_jax_call("evaluation_warm", "warm"))
      if "siriib_jax_robust" in flags:
        results["warm"]["agreement_with_first_call"] = agreement(flags["warm_robust"],
                                                                 flags["siriib_jax_robust"])
        save()
  results["_run"]["total_seconds"] = round(time.time() - started, 2)
  save()
  print(table(results))


def table(results: dict) -> str:
  """The Markdown summary of `results` (what ran; '—' for what did not)."""
  cold, warm = results.get("siriib_jax", {}), results.get("warm", {})
  official, run = results.get("official", {}), results["_run"]
  points = results.get("points", {}).get("n", "?")

  def seconds(side, name):
    part = side.get("components", {}).get(name)
    return part["seconds"] if part else None

  def cell(value, fmt="{:.1f}"):
    return "—" if value is None else fmt.format(value)

  def percent(value):
    return "—" if value is None else f"{100 * value:.1f} %"

  lines = [(f"AutoAttack standard, L∞ 8/255, {points} stratified CIFAR-10 test points (seed "
            f"0); ResNet-18 PGD-AT, {results.get('train', {}).get('epochs', '?')} epoch(s) on "
            f"{run['train_pixels']} training pixels; devices {run['devices']} "
            f"({run['backend']}), CPU {run['cpu']}"),
           "",
           ("| component | siriib_jax 1st call s (compiling) | siriib_jax 2nd call s | "
            "official s | 2nd / official | robust after: siriib_jax / official |"),
           "|---|---|---|---|---|---|"]
  for name in COMPONENTS:
    s_warm, s_official = seconds(warm, name), seconds(official, name)
    ratio = s_warm / s_official if s_warm is not None and s_official else None
    after_j = cold.get("components", {}).get(name, {}).get("robust_after")
    after_o = official.get("components", {}).get(name, {}).get("robust_after")
    lines.append(f"| {name} | {cell(seconds(cold, name))} | {cell(s_warm)} | "
                 f"{cell(s_official)} | {cell(ratio, '{:.2f}×')} | "
                 f"{percent(after_j)} / {percent(after_o)} |")
  total_ratio = (warm["seconds"] / official["seconds"]
                 if warm.get("seconds") and official.get("seconds") else None)
  lines.append(f"| whole evaluation | {cell(cold.get('seconds'))} | {cell(warm.get('seconds'))}"
               f" | {cell(official.get('seconds'))} | {cell(total_ratio, '{:.2f}×')} | "
               f"{percent(cold.get('robust'))} / {percent(official.get('robust'))} |")
  lines.append("")
  if "agreement_robust" in official:
    a = official["agreement_robust"]
    lines.append(f"Per-point agreement of the robust flags: {a['same']}/{a['points']} "
                 f"(robust for both {a['robust_both']}, siriib_jax only "
                 f"{a['robust_siriib_jax_only']}, official only {a['robust_official_only']}); "
                 f"clean accuracy {percent(cold.get('clean'))} / "
                 f"{percent(official.get('clean'))}; logits max |Δ| "
                 f"{official.get('logits_max_abs_diff', float('nan')):.2e}; official set-up "
                 f"(its checks and clean pass) {cell(official.get('setup_seconds'))} s.")
  elif official.get("skipped"):
    lines.append(f"Official side skipped: {official['skipped']}.")
  for label, side in (("1st", cold), ("2nd", warm)):
    if side.get("programs_compiled") is not None:
      lines.append(f"siriib_jax {label} call: {side['programs_compiled']} programs compiled "
                   f"in {side['compile_seconds']:.1f} s (JAX backend compile events).")
  if warm.get("skipped"):
    lines.append(f"2nd call skipped: {warm['skipped']}.")
  if "train" in results:
    lines.append(f"Training {results['train']['phase_seconds']:.0f} s (compilation included); "
                 f"export {results.get('export', {}).get('phase_seconds', float('nan')):.1f} s;"
                 f" whole run {run.get('total_seconds', float('nan')):.0f} s.")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
