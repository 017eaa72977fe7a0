"""CPU-scale reproduction of the SiRIIB effect on real CIFAR-10 (issue 5, RESULTS.md).

Plain ResNet-18 against ResNet-18-SR, both at `--width` of the paper's channel counts
(SiRIIB's c(·) and p_i scaled alike), trained with `--strategy` (default TRADES, β = 6;
inner attack L∞, ε = 8/255, α = 2/255, `--attack_steps` steps) on a fixed stratified subset
of the CIFAR-10 training set, for the same number of epochs and steps; then, on the best
checkpoint by validation PGD, clean and PGD-20 accuracy on a fixed stratified subset of
`--eval_size` test points and
AutoAttack (standard) on a smaller fixed stratified subset of `--autoattack_size` (each
point AutoAttack cannot break costs 9 × 100 APGD-T and FAB-T steps and 5000 Square queries,
minutes on this CPU). Only the training seed changes between seeds; the data subsets and
the evaluation points are the same for every run.

    python bench/reproduce.py --out /tmp/siriib_repro            # the RESULTS.md protocol
    python bench/reproduce.py --out /tmp/siriib_clip --models resnet18_sr --clip_global_norm 10
    python bench/reproduce.py --out /tmp/siriib_repro --weight_averaging 0.995  # Averaged.
    python bench/reproduce.py --out /tmp/siriib_repro --models resnet18_sr --study \
        --guard affine_free_bn                                 # An IB-path guard, studied.

`--weight_averaging D` trains and evaluates with `weight_averaging.decay = D` (0: off, the
paper's protocol; docs/weight_averaging.md): its runs are named `<model>_seed<s>_wa<D>` and
go into the same results.json beside the runs without averaging, and the table has a row
per model and averaging.

Reads the pixels from ../shared/data (the project's copy of CIFAR-10) and writes them as
`npz` datasets into `--out/data`; everything else goes through the product
(`train_and_evaluate`, `evaluate.evaluate`). Results: `--out/results.json` (runs
already there are skipped, an interrupted run resumes from its checkpoint), and a Markdown
table of mean ± sample standard deviation over the seeds on stdout.

`--guard G` trains the SiRIIB runs with `model.siriib.guard = G` (runs `<…>_<G>`);
`--study` adds, for every SiRIIB run (also finished ones that lack it), the IB path's
health and skip ablation (`evaluation/ib_path.py`) on the `--eval_size` points, Table 4's
adaptive attacks and the gradient-masking checklist on `--adaptive_size` points.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import shutil
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from siriib_jax.configs import default  # noqa: E402  pylint: disable=wrong-import-position
from siriib_jax.data import stratified_subset  # noqa: E402
from siriib_jax.evaluate import evaluate as evaluate_checkpoint  # noqa: E402
from siriib_jax.train import train_and_evaluate  # noqa: E402
from siriib_jax.runtime import configure_process  # noqa: E402


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
  config.strategy = args.strategy
  config.attack.steps = args.attack_steps
  config.attack.step_size = 2 / 255
  config.num_epochs = args.epochs
  config.batch_size = args.batch_size
  config.optimizer.learning_rate = args.learning_rate
  config.optimizer.decay_epochs = tuple(args.decay_epochs)
  config.optimizer.clip_global_norm = args.clip_global_norm
  config.weight_averaging.decay = args.weight_averaging
  config.model.siriib.guard = args.guard
  config.log_every_steps = 20
  config.keep_checkpoints = 1
  config.final_eval_size = 0  # Evaluated below, by `evaluate`.
  config.evaluation.seed = 0  # The same test points and attack randomness for every run.
  config.evaluation.checkpoint = "best"
  return config


def evaluate(config, workdir: pathlib.Path, attacks, subset_size: int,
             checklist: bool = False) -> dict:
  """`attacks` on a stratified subset of the test set (evaluation seed 0), through
  `main.py --mode=eval`'s code; the report is kept as `workdir/evaluation_{attacks}`.
  Returns name -> accuracy (%)."""
  config = config.copy_and_resolve_references()
  config.evaluation.attacks = tuple(attacks)
  config.evaluation.subset_size = subset_size
  config.evaluation.checklist.large_eps = 0.0
  if checklist:
    config.evaluation.checklist.large_eps = 64 / 255
  report = evaluate_checkpoint("eval", config, str(workdir))
  kept = workdir / f"evaluation_{'_'.join(a.replace(':', '-') for a in attacks)}"
  shutil.rmtree(kept, ignore_errors=True)  # From an interrupted earlier attempt.
  (workdir / "evaluation").rename(kept)
  out = {row.name: 100.0 * row.accuracy for row in report.rows}
  if report.meta.get("ib_path", {}).get("measured"):
    ib = report.meta["ib_path"]
    out["ib_path"] = {**ib["health"], "own": ib["own"], "ablated": ib["ablated"]}
  if checklist:
    out["checklist_passed"] = report.passed
  return out


def study(config, workdir: pathlib.Path, args) -> dict:
  """The IB path and the attacks a guard must face: the skip ablation (clean, PGD-20) on the
  `eval_size` points, then Table 4's adaptive attacks and the gradient-masking checklist
  (large-ε PGD included) on the first `adaptive_size` of a stratified subset."""
  ablation = evaluate(config, workdir, ("clean", "pgd20"), args.eval_size)
  adaptive = evaluate(config, workdir, ("clean", "pgd20", "adaptive"), args.adaptive_size,
                      checklist=True)
  return {"ib_path": ablation.get("ib_path"), "checklist_passed": adaptive["checklist_passed"],
          **{k: v for k, v in adaptive.items() if k.startswith("adaptive:")}}


MODELS = ("resnet18", "resnet18_sr")  # Without and with SiRIIB.


def main():
  configure_process()  # As main.py runs.
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, type=pathlib.Path)
  parser.add_argument("--shared", type=pathlib.Path, default=REPO.parent / "shared" / "data")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--train_size", type=int, default=5000)
  parser.add_argument("--validation_size", type=int, default=500)
  parser.add_argument("--width", type=float, default=0.125)
  parser.add_argument("--strategy", default="trades")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--decay_epochs", type=int, nargs="*", default=[2],
                      help="epochs after which the learning rate is multiplied by 0.1")
  parser.add_argument("--attack_steps", type=int, default=5)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--learning_rate", type=float, default=0.05)
  parser.add_argument("--eval_size", type=int, default=500, help="clean and PGD-20 points")
  parser.add_argument("--autoattack_size", type=int, default=40, help="AutoAttack points")
  parser.add_argument("--clip_global_norm", type=float, default=0.0,
                      help="optimizer.clip_global_norm (0: no clipping, as the paper)")
  parser.add_argument("--weight_averaging", type=float, default=0.0,
                      help="weight_averaging.decay (0: off, as the paper; e.g. 0.995)")
  parser.add_argument("--models", choices=MODELS, nargs="+", default=list(MODELS),
                      help="which of the two models to train")
  parser.add_argument("--guard", default="none",
                      help="model.siriib.guard of the SiRIIB runs (none: the paper's form)")
  parser.add_argument("--study", action="store_true",
                      help="also (and for finished SiRIIB runs without it) the IB-path study: "
                           "skip ablation, Table 4's adaptive attacks, the checklist")
  parser.add_argument("--adaptive_size", type=int, default=200,
                      help="points of the adaptive attacks and the checklist (--study)")
  args = parser.parse_args()

  data_dir = write_data(args.out, args.train_size, args.shared)
  results_path = args.out / "results.json"
  results = json.loads(results_path.read_text()) if results_path.exists() else {}
  for seed in args.seeds:
    for model in args.models:
      siriib = model == "resnet18_sr"
      name = f"{model}_seed{seed}" + (f"_wa{args.weight_averaging:g}"
                                      if args.weight_averaging else "")
      if siriib and args.guard != "none":
        name += f"_{args.guard}"
      config, workdir = run_config(args, data_dir, seed, siriib), args.out / name
      if name in results:
        if siriib and args.study and "checklist_passed" not in results[name]:
          results[name].update(study(config, workdir, args))
          results_path.write_text(json.dumps({**results, "_args": {
              k: str(v) for k, v in vars(args).items()}}, indent=2))
          results.pop("_args", None)
          print(name, "study", results[name], flush=True)
        continue
      started = time.time()
      summary = train_and_evaluate(config, str(workdir))
      if summary["status"] != "completed":
        raise SystemExit(f"{name}: training {summary['status']}; rerun to resume it")
      accuracies = {**evaluate(config, workdir, ("clean", "pgd20"), args.eval_size),
                    **evaluate(config, workdir, ("autoattack",), args.autoattack_size)}
      results[name] = {"siriib": siriib, "seed": seed, "weight_averaging":
                       args.weight_averaging, "guard": args.guard if siriib else "none",
                       "seconds": time.time() - started,
                       "train_seconds": summary["train_seconds"],
                       "best_validation_pgd": summary["best_validation_pgd"],
                       "ib_path_validation": summary.get("ib_path"), **accuracies}
      if siriib and args.study:
        results[name].update(study(config, workdir, args))
      results_path.write_text(json.dumps({**results, "_args": {
          k: str(v) for k, v in vars(args).items()}}, indent=2))
      results.pop("_args", None)
      print(name, results[name], flush=True)

  print(f"\n| model | weight averaging | guard | clean | PGD-20 | AutoAttack | runs |\n"
        f"|---|---|---|---|---|---|---|")
  kinds = sorted({(r.get("weight_averaging", 0.0), r.get("guard", "none"))
                  for k, r in results.items() if not k.startswith("_")})
  for siriib, decay, guard in [(s, d, g) for d, g in kinds for s in (False, True)]:
    runs = [r for k, r in results.items() if not k.startswith("_") and r["siriib"] == siriib
            and r.get("weight_averaging", 0.0) == decay and r.get("guard", "none") == guard]
    if not runs or (not siriib and guard != "none"):
      continue
    cells = []
    for metric in ("clean", "pgd20", "autoattack"):
      values = np.array([r[metric] for r in runs])
      cells.append(f"{values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0:.2f}")
    print(f"| {'ResNet-18-SR' if siriib else 'ResNet-18'} × {args.width} | "
          f"{decay if decay else 'off'} | {guard} | {' | '.join(cells)} | {len(runs)} |")


if __name__ == "__main__":
  main()
