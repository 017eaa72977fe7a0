"""Alternated timing of several jobs: the helper the benchmarks compare frameworks with."""

import time
from typing import Callable, Dict

import numpy as np


def median_seconds(jobs: Dict[str, Callable[[], object]], repeats: int = 5,
                   calls: int = 10) -> Dict[str, float]:
  """Median seconds of one call of each job: one warm-up call each (compilation), then
  `repeats` rounds in which every job runs `calls` times in turn (so that a drift of the
  machine's speed touches every job alike). A job must finish its work before it returns
  (e.g. `jax.block_until_ready`)."""
  for job in jobs.values():
    job()
  times = {name: [] for name in jobs}
  for _ in range(repeats):
    for name, job in jobs.items():
      start = time.perf_counter()
      for _ in range(calls):
        job()
      times[name].append((time.perf_counter() - start) / calls)
  return {name: float(np.median(t)) for name, t in times.items()}
