"""Where a profiled step's GPU time goes: kernels by category, from a `jax.profiler` trace.

Reads the Perfetto trace (`perfetto_trace.json.gz`) that `bench/gpu_step.py --profile DIR`
writes for each variant and sums the kernel time on the GPU's streams (threads named
`Stream …` of a `/device:GPU:…` process; the `XLA Ops` / `XLA Modules` rows repeat the
same time at a coarser grain and are used only for the wall span). Categories come from
the kernel names: matrix units (cuDNN/cuBLAS/CUTLASS convolutions and products), FFT,
SVD / eigen-solver, XLA's own fused elementwise and reduction kernels, copies, other.

    python bench/kernel_profile.py DIR [--top 25]

Prints, per trace: the span from the first to the last kernel, the time at least one
kernel ran (merged intervals; the rest is idle GPU: launch gaps, host work), each
category's share of the kernel time, and the top kernels.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re

CATEGORIES = (  # First match wins; names lower-cased.
    ("fft", re.compile(r"fft")),
    ("svd / eigen", re.compile(r"gesvd|gesdd|syevd|svd|jacobi|potrf|geqrf|orgqr|ormqr|heevd")),
    ("convolution / matmul", re.compile(
        r"conv|cudnn|xmma|gemm|cutlass|nvjet|wgmma|hmma|implicit|winograd|sm\d\d_")),
    ("copy / transpose", re.compile(r"memcpy|memset|copy|transpose")),
    ("xla fusion (elementwise / reduce)", re.compile(
        r"fusion|reduce|loop_|input_|wrapped_|select|broadcast|convert|scatter|gather|"
        r"iota|concatenate|slice|pad|dynamic")),
)


def categorise(name: str) -> str:
  lower = name.lower()
  for category, pattern in CATEGORIES:
    if pattern.search(lower):
      return category
  return "other"


def _merged_length(intervals) -> float:
  total, end = 0.0, float("-inf")
  for start, stop in sorted(intervals):
    if start > end:
      total += stop - start
      end = stop
    elif stop > end:
      total += stop - end
      end = stop
  return total


def summarise(trace_path: str) -> dict:
  """Kernel time of the GPU streams in one trace: {span_us, busy_us, kernel_us,
  categories: {name: us}, kernels: {name: (us, count)}, streams: [names]}."""
  with gzip.open(trace_path, "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  process, thread = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      process[e["pid"]] = e["args"]["name"]
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      thread[(e["pid"], e.get("tid"))] = e["args"]["name"]
  gpu = {pid for pid, name in process.items() if "GPU" in name or "gpu" in name}
  kernels = collections.defaultdict(lambda: [0.0, 0])
  intervals, streams = [], set()
  for e in events:
    if e.get("ph") != "X" or e.get("pid") not in gpu:
      continue
    name = thread.get((e["pid"], e.get("tid")), "")
    if not name.startswith("Stream"):
      continue
    streams.add(name)
    kernels[e["name"]][0] += e["dur"]
    kernels[e["name"]][1] += 1
    intervals.append((e["ts"], e["ts"] + e["dur"]))
  categories = collections.Counter()
  for name, (us, _) in kernels.items():
    categories[categorise(name)] += us
  span = (max(b for _, b in intervals) - min(a for a, _ in intervals)) if intervals else 0.0
  return {"span_us": span, "busy_us": _merged_length(intervals),
          "kernel_us": sum(us for us, _ in kernels.values()),
          "categories": dict(categories), "kernels": {k: tuple(v) for k, v in kernels.items()},
          "streams": sorted(streams)}


def _print(path: str, s: dict, top: int) -> None:
  print(f"\n## {path}\nstreams: {', '.join(s['streams']) or 'none (no GPU in this trace)'}")
  if not s["kernels"]:
    return
  print(f"span {s['span_us'] / 1e3:.1f} ms, GPU busy {s['busy_us'] / 1e3:.1f} ms "
        f"({s['busy_us'] / s['span_us']:.0%}), kernel time {s['kernel_us'] / 1e3:.1f} ms")
  print("\n| category | ms | share of kernel time |\n|---|---|---|")
  for category, us in sorted(s["categories"].items(), key=lambda kv: -kv[1]):
    print(f"| {category} | {us / 1e3:.1f} | {us / s['kernel_us']:.1%} |")
  print("\n| top kernel | category | ms | calls |\n|---|---|---|---|")
  ranked = sorted(s["kernels"].items(), key=lambda kv: -kv[1][0])[:top]
  for name, (us, count) in ranked:
    print(f"| `{name[:90]}` | {categorise(name)} | {us / 1e3:.2f} | {count} |")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("directory", help="a --profile DIR of bench/gpu_step.py, or any trace folder")
  p.add_argument("--top", type=int, default=25)
  args = p.parse_args(argv)
  paths = sorted(glob.glob(os.path.join(args.directory, "**", "*perfetto_trace.json.gz"),
                           recursive=True))
  if not paths:
    raise SystemExit(f"no *perfetto_trace.json.gz under {args.directory}")
  for path in paths:
    _print(os.path.relpath(path, args.directory), summarise(path), args.top)


if __name__ == "__main__":
  main()
