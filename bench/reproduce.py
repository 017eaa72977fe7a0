"""CPU-scale reproduction of the SiRIIB effect on real CIFAR-10 (issue 5, RESULTS.md).

Plain ResNet-18 against ResNet-18-SR, both at `--width` of the paper's channel counts,
trained with PGD-AT (ε = 8/255, α = 2/255, 10 steps — the paper's inner attack) on a fixed
stratified subset of the CIFAR-10 training set, for the same number of epochs; then clean,
PGD-20 and AutoAttack (standard) accuracy on a fixed stratified subset of the test set,
for each of several seeds. Only the training seed changes between seeds; the data subsets
and the evaluation points are the same for every run.

    python bench/reproduce.py --out /tmp/siriib_repro            # the RESULTS.md protocol

Reads the pixels from ../shared/data (the project's copy of CIFAR-10) and writes them as
`npz` datasets into `--out/data`; everything else goes through the product
(`train_and_evaluate`, `evaluate_robustness`). Results: `--out/results.json`, and a Markdown
table on stdout.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from configs import default  # noqa: E402  pylint: disable=wrong-import-position
from siriib_jax.data import stratified_subset  # noqa: E402
from siriib_jax.train import train_and_evaluate  # noqa: E402


def _load_cifar10(shared: pathlib.Path):
  spec = importlib.util.spec_from_file_location("shared_cifar", shared / "cifar.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.load("cifar10", "train"), module.load("cifar10", "test")


def write_data(out: pathlib.Path, train_size: int, shared: pathlib.Path) -> str:
  """A stratified `train_size` subset of the training set (seed 0) and the full test set,
  as `{out}/data/{train,test}.npz`."""
  directory = out / "data"
  if (directory / "train.npz").exists() and (directory / "test.npz").exists():
    return str(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (train_x, train_y), (test_x, test_y) = _load_cifar10(shared)
  keep = stratified_subset(train_y, train_size, seed=0)
  np.savez(directory / "train.npz", image=train_x[keep], label=train_y[keep])
  np.savez(directory / "test.npz", image=test_x, label=test_y)
  return str(directory)


def run_config(args, data_dir: str, seed: int, siriib: bool):
  config = default.get_config()
  config.dataset.name = "npz"
  config.dataset.data_dir = data_dir
  config.dataset.validation_size = args.validation_size
  config.model.width_multiplier = args.width
  config.model.siriib.enabled = siriib
  config.seed = seed
  config.num_epochs = args.epochs
  config.batch_size = args.batch_size
  config.optimizer.learning_rate = args.learning_rate
  # The paper's schedule (× 0.1 at 50 % and 75 % of training), compressed.
  config.optimizer.decay_epochs = (args.epochs // 2, (3 * args.epochs) // 4)
  config.log_every_steps = 20
  config.keep_checkpoints = 1
  config.final_eval_size = args.eval_size
  config.final_eval_attacks = ("clean", "pgd20", "autoattack")
  config.evaluation.seed = 0  # The same test points and attack randomness for every run.
  return config


def _accuracy(final: dict, name: str) -> float:
  for row in final["rows"]:
    if row["name"] == name:
      return 100.0 * row["accuracy"]
  raise KeyError(name)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, type=pathlib.Path)
  parser.add_argument("--shared", type=pathlib.Path, default=REPO.parent / "shared" / "data")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--train_size", type=int, default=5000)
  parser.add_argument("--validation_size", type=int, default=500)
  parser.add_argument("--width", type=float, default=0.125)
  parser.add_argument("--epochs", type=int, default=4)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--learning_rate", type=float, default=0.1)
  parser.add_argument("--eval_size", type=int, default=200)
  args = parser.parse_args()

  data_dir = write_data(args.out, args.train_size, args.shared)
  results_path = args.out / "results.json"
  results = json.loads(results_path.read_text()) if results_path.exists() else {}
  for seed in args.seeds:
    for siriib in (False, True):
      name = f"{'resnet18_sr' if siriib else 'resnet18'}_seed{seed}"
      if name in results:
        continue
      started = time.time()
      summary = train_and_evaluate(run_config(args, data_dir, seed, siriib),
                                   str(args.out / name))
      final = summary["final_evaluation"]
      results[name] = {"siriib": siriib, "seed": seed, "seconds": time.time() - started,
                       "train_seconds": summary["train_seconds"],
                       **{k: _accuracy(final, k) for k in ("clean", "pgd20", "autoattack")}}
      results_path.write_text(json.dumps({**results, "_args": {
          k: str(v) for k, v in vars(args).items()}}, indent=2))
      results.pop("_args", None)
      print(name, results[name], flush=True)

  print(f"\n| model | clean | PGD-20 | AutoAttack | runs |\n|---|---|---|---|---|")
  for siriib in (False, True):
    runs = [r for k, r in results.items() if not k.startswith("_") and r["siriib"] == siriib]
    cells = []
    for metric in ("clean", "pgd20", "autoattack"):
      values = np.array([r[metric] for r in runs])
      cells.append(f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0:.2f}")
    print(f"| {'ResNet-18-SR' if siriib else 'ResNet-18'} × {args.width} | "
          f"{' | '.join(cells)} | {len(runs)} |")


if __name__ == "__main__":
  main()
