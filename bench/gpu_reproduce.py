"""ResNet-18 against ResNet-18-SR, PGD-AT on the full CIFAR-10, within ~10 minutes of one GPU
(issue 14, item 6; RESULTS.md "GPU reproduction").

Both models train on one short schedule (`--epochs`, piecewise learning rate 0.1 → 0.01 →
0.001 at 75 % and 90 % of it; PGD-10 inner attack, L∞ ε = 8/255, α = 2/255; batch 128;
bf16 compute on an accelerator, `config.half_precision`), everything else as
`configs/cifar10_r18.py` (the paper's §5.1 setting, SPEC §4, exact orthogonality). Then,
on the best checkpoint by validation PGD-20 (1,000 held-out training images): clean and
PGD-20 accuracy on all 10,000 test images, and AutoAttack (standard) on a fixed stratified
1,000 (`--autoattack_size`, evaluation seed 0) — through the product (`train_and_evaluate`,
`evaluate`), as `main.py` runs them.

Data: the folder of `python ../shared/data/cifar.py pack .gpu_data` (a 47 MiB copy that the
device tool can carry: the lossless test split and the training split as **JPEG quality
92**, which any result must say) or `../shared/data` itself (the lossless pixels):

    python ../shared/data/cifar.py pack .gpu_data     # here, once (.gpu_data is ignored)
    python bench/gpu_reproduce.py --data ../shared/data --out /tmp/gr --toy   # CPU check

Phases run in the order that keeps the most if the device's time runs out: each model's
training and its clean / PGD-20 evaluation first, AutoAttack on both last; `results.json`
is rewritten after every phase. The device image has no TensorFlow, which clu's TensorBoard
writer imports: where TensorFlow is missing, the run logs its metrics without event files
(`_without_tensorboard`).

On one H200 the default 6 epochs took about 10 minutes in all (RESULTS.md "GPU
reproduction"; ResNet-18 / ResNet-18-SR: training 126 / 230 s, clean and PGD-20 17 / 34 s,
AutoAttack 54 / 114 s, compilation included), more than one 600-s device call holds with
start-up: run one model per call (`--models resnet18`, then `--models resnet18_sr`, the
same `--out` on the same warm machine: `results.json` gathers both), or fewer `--epochs`.
Training progress (loss, `train/r_tau`, `train/f_spread`, ...) goes to the absl log on
stderr.

On the device tool's machine (its image has jax with CUDA, flax, optax, orbax, chex, but
not ml-collections, clu or TensorFlow), carry the two missing pure-Python wheels, fetched
here once into the ignored folder `.whl`:

    pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0 clu==0.0.12
    # device command, carry [".gpu_data", ".whl"]:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
      PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 bench/gpu_reproduce.py \
      --data .gpu_data --out /tmp/gr --models resnet18 && cp /tmp/gr/results.json $OUT/

The device's jax (0.11.2, CUDA 13 in session 13) is its image's, not this project's pin.
`--phases clean_pgd20,autoattack` (or `autoattack` alone) evaluates the workdirs of an
earlier call with the same `--out` again, without training, and adds to its `results.json`
(RESULTS.md's ResNet-18-SR AutoAttack was re-run before this flag existed, by calling the
same `evaluate` on the saved workdir).

`--toy` shrinks everything (width 1/8, 512 training images, 1 epoch, PGD-1, 64 + 20 test
points) to check the script on a CPU in a few minutes; its numbers mean nothing.
Writes `--out/results.json` (per model: accuracies in %, seconds of each phase, the
training summary's `orthogonality_error` for the SR model) and prints a Markdown table.
"""

import argparse
import importlib.util
import json
import pathlib
import sys
import time
import types

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def _without_tensorboard():
  """Where TensorFlow is not installed (the device tool's image, where nothing can be
  installed), stands in a no-op for clu's TensorBoard summary writer, which imports it; the
  metrics still reach the log through clu's logging writer. Elsewhere does nothing."""
  try:
    import tensorflow  # pylint: disable=import-outside-toplevel,unused-import
    return
  except ImportError:
    pass

  class NoEventFiles:  # clu's MetricWriter methods (write_scalars, flush, ...), doing nothing.

    def __init__(self, *unused_args, **unused_kwargs):
      pass

    def __getattr__(self, name):
      return lambda *unused_args, **unused_kwargs: None

  stand_in = types.ModuleType("clu.metric_writers.summary_writer")
  stand_in.SummaryWriter = NoEventFiles
  sys.modules[stand_in.__name__] = stand_in
  print("TensorFlow is not installed: no TensorBoard event files in this run.", flush=True)


_without_tensorboard()  # Before siriib_jax.train imports clu.

from siriib_jax.runtime import configure_process  # noqa: E402  pylint: disable=wrong-import-position

configure_process()  # As main.py runs; before JAX initialises its backends.

from absl import logging  # noqa: E402  pylint: disable=wrong-import-position
import jax  # noqa: E402  pylint: disable=wrong-import-position

from reproduce import evaluate  # noqa: E402  pylint: disable=wrong-import-position
from siriib_jax.configs import cifar10_r18  # noqa: E402  pylint: disable=wrong-import-position
from siriib_jax.data import stratified_subset  # noqa: E402  pylint: disable=wrong-import-position
from siriib_jax.train import train_and_evaluate  # noqa: E402  pylint: disable=wrong-import-position

MODELS = {"resnet18": False, "resnet18_sr": True}  # name -> SiRIIB enabled.


def _parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", type=pathlib.Path, required=True,
                 help="a folder with cifar.py: .gpu_data (packed) or ../shared/data")
  p.add_argument("--out", type=pathlib.Path, required=True)
  p.add_argument("--epochs", type=int, default=6)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--autoattack_size", type=int, default=1000)
  p.add_argument("--eval_size", type=int, default=0, help="clean / PGD-20 points; 0 = all")
  p.add_argument("--models", default="resnet18,resnet18_sr")
  p.add_argument("--phases", default="train,clean_pgd20,autoattack",
                 help="comma list of train, clean_pgd20, autoattack; without train, each "
                      "model's --out workdir must hold a finished training")
  p.add_argument("--weight_averaging", type=float, default=0.0,
                 help="weight_averaging.decay (0: off, as the paper)")
  p.add_argument("--guard", default="none", help="model.siriib.guard (none: the paper's)")
  p.add_argument("--toy", action="store_true", help="a few-minute CPU check of the script")
  return p.parse_args(argv)


def load_pixels(folder: pathlib.Path):
  """(train images, labels, split name), (test images, labels) from `folder/cifar.py`: the
  JPEG-q92 training split where the folder is a packed copy, else the lossless one."""
  spec = importlib.util.spec_from_file_location("cifar_pixels", folder / "cifar.py")
  cifar = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cifar)
  split = "train_q92" if (folder / "cifar10_train_q92.json").exists() else "train"
  return (*cifar.load("cifar10", split), split), cifar.load("cifar10", "test")


def write_npz(out: pathlib.Path, folder: pathlib.Path, train_size: int) -> tuple[str, str]:
  """`out/data/{train,test}.npz` (all training images, or a stratified `train_size`);
  returns the folder and the training split's name."""
  (train_x, train_y, split), (test_x, test_y) = load_pixels(folder)
  if train_size:
    keep = stratified_subset(train_y, train_size, seed=0)
    train_x, train_y = train_x[keep], train_y[keep]
  directory = out / "data"
  directory.mkdir(parents=True, exist_ok=True)
  np.savez(directory / "train.npz", image=train_x, label=train_y)
  np.savez(directory / "test.npz", image=test_x, label=test_y)
  return str(directory), split


def make_config(args, data_dir: str, siriib: bool, weight_averaging: float = 0.0,
                guard: str = "none"):
  """The run's config from `args` (`epochs`, `batch_size`, `toy`), the packed data and the
  model's options (also read by `gpu_autoattack.py`, whose arguments have no
  `--weight_averaging` or `--guard`)."""
  config = cifar10_r18.get_config()
  config.dataset.name = "npz"
  config.dataset.data_dir = data_dir
  config.model.siriib.enabled = siriib
  config.num_epochs = args.epochs
  config.optimizer.decay_epochs = (max(1, round(0.75 * args.epochs)),
                                   max(1, round(0.9 * args.epochs)))
  config.batch_size = args.batch_size
  config.weight_averaging.decay = weight_averaging
  config.model.siriib.guard = guard
  config.half_precision = jax.default_backend() != "cpu"
  config.keep_checkpoints = 1
  config.log_every_steps = 100
  config.final_eval_size = 0  # Evaluated below through `evaluate`.
  config.evaluation.seed = 0  # The same points and attack randomness for both models.
  config.evaluation.batch_size = 1000 if jax.default_backend() != "cpu" else 256
  if args.toy:
    config.model.width_multiplier = 0.125
    config.model.siriib.scales = (32, 16)
    config.dataset.validation_size = 64
    config.attack.steps = 1
    config.eval_pgd_steps = 1
    config.evaluation.square_queries = 50
  return config


def main(argv=None):
  args = _parse_args(argv)
  logging.set_verbosity(logging.INFO)  # The training log (clu's logging writer) on stderr.
  phases, known = set(args.phases.split(",")), {"train", "clean_pgd20", "autoattack"}
  if not phases <= known:
    raise SystemExit(f"--phases: unknown {sorted(phases - known)}; choose from {sorted(known)}")
  if args.toy:
    args.epochs, args.batch_size = 1, 32
    args.eval_size, args.autoattack_size = args.eval_size or 64, min(args.autoattack_size, 20)
  started = time.time()
  data_dir, split = write_npz(args.out, args.data, 512 if args.toy else 0)
  results = {"_run": {"backend": jax.default_backend(),
                      "devices": [d.device_kind for d in jax.devices()],
                      "train_split": split, "args": {k: str(v) for k, v in vars(args).items()},
                      "data_seconds": time.time() - started}}
  path = args.out / "results.json"
  if path.exists():  # An earlier call's phases (e.g. training) are kept beside this one's.
    results = {**json.loads(path.read_text()), "_run": results["_run"]}
  names = args.models.split(",")
  configs = {name: make_config(args, data_dir, MODELS[name], args.weight_averaging,
                              args.guard) for name in names}

  def phase(name, key, seconds_key, run):
    start = time.time()
    value = run()
    results.setdefault(name, {}).update({**value, seconds_key: time.time() - start})
    path.write_text(json.dumps(results, indent=1))
    print(name, key, json.dumps(results[name]), flush=True)

  for name in names:  # Training and clean / PGD-20 of each model, then AutoAttack of both.
    workdir = args.out / name

    def train(config=configs[name], workdir=workdir, name=name):
      summary = train_and_evaluate(config, str(workdir))
      if summary["status"] != "completed":
        raise SystemExit(f"{name}: training {summary['status']}")
      return {"best_validation_pgd": summary.get("best_validation_pgd"),
              "orthogonality_error": summary.get("orthogonality_error"),
              # SiRIIB's IB path on the validation images (the test points' health and
              # skip ablation come with clean_pgd20, `reproduce.evaluate`).
              "ib_path_validation": summary.get("ib_path")}

    if "train" in phases:
      phase(name, "trained", "train_seconds", train)
    elif not (workdir / "summary.json").exists():
      raise SystemExit(f"{name}: no training in {workdir} (summary.json); add train to --phases")
    if "clean_pgd20" in phases:
      phase(name, "evaluated", "clean_pgd20_seconds",
            lambda name=name, workdir=workdir: evaluate(configs[name], workdir,
                                                        ("clean", "pgd20"), args.eval_size))
  for name in names:
    if "autoattack" in phases:
      phase(name, "autoattack", "autoattack_seconds",
            lambda name=name: evaluate(configs[name], args.out / name, ("autoattack",),
                                       args.autoattack_size))

  print(f"\n| model | clean (10,000) | PGD-20 (10,000) | AutoAttack ({args.autoattack_size}) "
        f"| train s |\n|---|---|---|---|---|")
  def cell(r, key, digits):
    return f"{r[key]:.{digits}f}" if key in r else "—"

  for name in names:
    r = results.get(name, {})
    print(f"| {name} | {cell(r, 'clean', 2)} | {cell(r, 'pgd20', 2)} | "
          f"{cell(r, 'autoattack', 2)} | {cell(r, 'train_seconds', 0)} |")
  print(f"training pixels: {split}" + (" (JPEG quality 92)" if split == "train_q92" else ""))


if __name__ == "__main__":
  main()
