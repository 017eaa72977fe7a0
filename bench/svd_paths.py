"""Times the CPU SVD paths of `siriib_jax/svd.py`: one LAPACK call per matrix (the package's
CPU path) against one batched `jnp.linalg.svd` (its GPU/TPU path), alternated.

For `L_svd`'s value and gradient (`losses.svd_loss` of x_avg against x) and for
`swap_singular_values`, at `--batch-size` images of 32 × 32 × 3, it compiles both variants,
then alternates per-matrix, batched, per-matrix, … for `--repeats` calls each and reports
each one's median time and the median of the per-repeat ratios per-matrix / batched.

    python bench/svd_paths.py --batch-size 128 --repeats 30

The batched variant is the one that can hang XLA:CPU's pool on a 2-core host (module doc
of svd.py): after `--hang-timeout` seconds without progress the run stops with exit
status 3 and a message naming the variant (run it again). Runs with XLA's Eigen convolutions, as `main.py` does.
"""

import argparse
import json
import os
import re
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from siriib_jax.runtime import configure_process  # noqa: E402

configure_process()

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402

from siriib_jax import losses, svd  # noqa: E402


def _batched_lapack_svd(x, compute_uv=True):
  out = jnp.linalg.svd(x, full_matrices=False, compute_uv=compute_uv)
  return tuple(out) if compute_uv else out


def _compiled(fn, args, batched: bool):
  """`fn` jitted and compiled with the per-matrix or the batched SVD."""
  per_matrix = svd._lapack_svd  # pylint: disable=protected-access
  jax.clear_caches()  # JAX caches the traces of svd.py's custom-VJP functions.
  if batched:
    svd._lapack_svd = _batched_lapack_svd  # pylint: disable=protected-access
  try:
    compiled = jax.jit(fn).lower(*args).compile()
  finally:
    svd._lapack_svd = per_matrix  # pylint: disable=protected-access
  batch_dims = set(re.findall(r'num_batch_dims="(\d+)"', compiled.as_text()))
  assert batch_dims == ({"2"} if batched else {"0"}), batch_dims
  return compiled


def _hung(timeout: float, what: str):
  print(f"no progress in {timeout:.0f} s timing {what}: hung", file=sys.stderr, flush=True)
  os._exit(3)  # pylint: disable=protected-access


def _time(fn, args, timeout: float, what: str) -> float:
  watchdog = threading.Timer(timeout, _hung, (timeout, what))
  watchdog.daemon = True
  watchdog.start()
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  elapsed = time.perf_counter() - start
  watchdog.cancel()
  return elapsed


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--repeats", type=int, default=30)
  p.add_argument("--paths", default="svd_loss,swap", help="comma list of svd_loss, swap")
  p.add_argument("--hang-timeout", type=float, default=120.0)
  p.add_argument("--json", default="", help="also write the results here")
  args = p.parse_args(argv)

  x = jax.random.uniform(jax.random.key(0), (args.batch_size, 32, 32, 3))
  x_avg = jnp.clip(x + 0.03 * jax.random.normal(jax.random.key(1), x.shape), 0.0, 1.0)
  paths = {
      "svd_loss": (jax.value_and_grad(lambda a, b: jnp.mean(losses.svd_loss(a, b))),
                   (x_avg, x)),
      "swap": (svd.swap_singular_values, (x_avg, x)),
  }
  results = {"batch_size": args.batch_size, "repeats": args.repeats,
             "cpus": len(os.sched_getaffinity(0)), "backend": jax.default_backend()}
  for name in args.paths.split(","):
    fn, fn_args = paths[name]
    variants = {"per_matrix": _compiled(fn, fn_args, batched=False),
                "batched": _compiled(fn, fn_args, batched=True)}
    times = {k: [] for k in variants}
    for _ in range(args.repeats + 1):  # The first round warms up.
      for key, compiled in variants.items():
        times[key].append(_time(compiled, fn_args, args.hang_timeout, f"{name}, {key}"))
    times = {k: v[1:] for k, v in times.items()}
    ratios = [a / b for a, b in zip(times["per_matrix"], times["batched"])]
    results[name] = {k + "_median_s": statistics.median(v) for k, v in times.items()}
    results[name]["ratio_median"] = statistics.median(ratios)
    print(f"{name}: per-matrix {results[name]['per_matrix_median_s'] * 1e3:.1f} ms, "
          f"batched {results[name]['batched_median_s'] * 1e3:.1f} ms, "
          f"median ratio {results[name]['ratio_median']:.2f}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
