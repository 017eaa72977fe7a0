"""PGD's robust accuracy when a point counts as broken at its first adversarial iterate
(`pgd(..., keep='first_success')`, the evaluation's PGD) against the last iterate alone
(`keep='last'`, as most papers' PGD numbers are computed), on a trained checkpoint.

One PGD trajectory per point (CE, L∞, ε and α from `config.evaluation.linf`, one uniform
random start) of `--steps` iterations gives every shorter PGD too (PGD-20 is the first 20
steps of PGD-100 from the same start): for each N in `--report` it records whether the
last iterate x⁽ᴺ⁾ is misclassified and whether any of x⁽⁰⁾ … x⁽ᴺ⁾ is. Only the points the
model classifies correctly are attacked (as `evaluate_robustness` does). With `--check`,
the first batch is attacked again by `attacks.pgd` itself in both forms, and the flags must
agree with the trajectory's.

    python main.py --config configs/quickstart.py --workdir /tmp/qs_h2
    python bench/pgd_best_iterate.py --config configs/quickstart.py --workdir /tmp/qs_h2
"""

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from siriib_jax.attacks import pgd  # noqa: E402
from siriib_jax.attacks.base import misclassified  # noqa: E402
from siriib_jax.attacks.gradients import (bind_objective, random_start, run_key,  # noqa: E402
                                          value_logits_and_grad)
from siriib_jax.attacks.objectives import cross_entropy  # noqa: E402
from siriib_jax.attacks.projections import normalized_step, project  # noqa: E402
from siriib_jax.checkpointing import load_variables  # noqa: E402
from siriib_jax.data import InputPipeline  # noqa: E402
from siriib_jax.evaluation import load_points  # noqa: E402
from siriib_jax.evaluation.batching import predict  # noqa: E402
from siriib_jax.models import create_model  # noqa: E402
from siriib_jax.models.model_fn import logits_fn  # noqa: E402
from siriib_jax.runtime import configure_process  # noqa: E402
from siriib_jax.runs import averaging_enabled  # noqa: E402


def trajectory(fn, x, y, key, *, eps, step_size, steps, report):
  """Per point, for each N in `report`: (last iterate x⁽ᴺ⁾ misclassified, any of x⁽⁰⁾ … x⁽ᴺ⁾
  misclassified), from the start and steps `attacks.pgd` takes with `key`."""
  objective = bind_objective(fn, cross_entropy, y)
  x0 = random_start(run_key(key, 1, 0), x, eps, "linf")  # pgd's run 0 of 1.
  never = jnp.full(y.shape, steps + 1, jnp.int32)

  def step(i, carry):
    x_adv, first, last_at = carry
    _, logits, grad = value_logits_and_grad(objective, x_adv, None)
    wrong = misclassified(logits, y)
    first = jnp.where((first > steps) & wrong, i, first)
    last_at = tuple(jnp.where(i == n, wrong, a) for n, a in zip(report, last_at))
    x_adv = project(x_adv + step_size * normalized_step(grad, "linf"), x, eps, "linf")
    return x_adv, first, last_at

  x_end, first, last_at = jax.lax.fori_loop(
      0, steps, step, (x0, never, tuple(jnp.zeros(y.shape, bool) for _ in report)))
  wrong_end = misclassified(objective(x_end, None)[1], y)
  first = jnp.where((first > steps) & wrong_end, steps, first)
  last_at = tuple(wrong_end if n == steps else a for n, a in zip(report, last_at))
  return first, jnp.stack(last_at, axis=1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=os.path.join(ROOT, "configs", "quickstart.py"))
  parser.add_argument("--workdir", default="/tmp/qs_h2")
  parser.add_argument("--checkpoint", default="best", help="'best' or 'last'")
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--report", default="20,100", help="step counts N to report")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--check", action="store_true",
                      help="re-run the first batch with attacks.pgd in both forms")
  parser.add_argument("--out", default="", help="write the result as JSON here")
  args = parser.parse_args()
  configure_process()

  spec = importlib.util.spec_from_file_location("experiment_config", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  report = tuple(int(n) for n in args.report.split(","))
  assert max(report) == args.steps and min(report) >= 1, "--report must end at --steps"
  eps, step_size = config.evaluation.linf.eps, config.evaluation.linf.step_size

  model = create_model(config.model, config.dataset.image_size, jnp.float32)
  size = config.dataset.image_size
  expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  variables, step = load_variables(args.workdir, args.checkpoint, expected=expected,
                                   averaged=averaging_enabled(config))
  data = InputPipeline(config.dataset, global_batch_size=args.batch, seed=config.seed,
                       training=False)
  x, y = load_points(data, config.evaluation, subset_size=0)
  fn = logits_fn(model, variables)
  correct = predict(fn, x, args.batch) == y
  todo = np.flatnonzero(correct)

  run = jax.jit(lambda f, xb, yb, k: trajectory(f, xb, yb, k, eps=eps, step_size=step_size,
                                                 steps=args.steps, report=report))
  key = jax.random.key(args.seed)
  firsts, lasts, started = [], [], time.time()
  def padded(index):
    """The points `index`, padded with the first to one compiled shape (batch `--batch`)."""
    pad = [0] * (args.batch - len(index))
    return x[np.concatenate([index, index[pad]])], y[np.concatenate([index, index[pad]])]

  for b, lo in enumerate(range(0, len(todo), args.batch)):
    index = todo[lo:lo + args.batch]
    xb, yb = padded(index)
    first, last = run(fn, xb, yb, jax.random.fold_in(key, b))
    firsts.append(np.asarray(first)[:len(index)])
    lasts.append(np.asarray(last)[:len(index)])
    print(f"batch {b}: {lo + len(index)}/{len(todo)} points, {time.time() - started:.0f} s",
          flush=True)
  first, last = np.concatenate(firsts), np.concatenate(lasts)
  seconds = time.time() - started

  result = {"checkpoint": f"{args.workdir} ({args.checkpoint}, step {int(step)})",
            "points": int(len(x)), "clean_correct": int(correct.sum()),
            "eps": eps, "step_size": step_size, "seconds": round(seconds, 1), "pgd": {}}
  for j, n in enumerate(report):
    broken_last = int(last[:, j].sum())
    broken_first = int((first <= n).sum())
    result["pgd"][f"pgd{n}"] = {
        "robust_last_iterate": int(correct.sum()) - broken_last,
        "robust_first_success": int(correct.sum()) - broken_first,
        "broken_only_by_an_earlier_iterate": broken_first - broken_last,
        "accuracy_last_iterate": (int(correct.sum()) - broken_last) / len(x),
        "accuracy_first_success": (int(correct.sum()) - broken_first) / len(x)}
  broken = first[first <= args.steps]
  result["first_adversarial_iterate"] = {
      "median": float(np.median(broken)) if len(broken) else None,
      "max": int(broken.max()) if len(broken) else None}

  if args.check:
    index = todo[:args.batch]
    (xb, yb), k = padded(index), jax.random.fold_in(key, 0)
    n = report[0]
    expect = {"first_success": firsts[0] <= n, "last": lasts[0][:, 0]}
    agree = {}
    for keep in ("first_success", "last"):
      attack = jax.jit(pgd(eps, step_size, n, keep=keep, unroll=False))
      got = np.asarray(attack(fn, xb, yb, k).success)[:len(index)]
      agree[keep] = int((got == expect[keep]).sum())
    result["check"] = {"pgd": n, "points": int(len(index)), "agree": agree}

  result["machine"] = subprocess.run("lscpu | grep 'Model name'", shell=True,
                                     capture_output=True, text=True).stdout.strip()
  result["cpus"] = os.cpu_count()
  result["python"] = platform.python_version()
  result["jax"] = jax.__version__
  result["commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()
  print(json.dumps(result, indent=2))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
