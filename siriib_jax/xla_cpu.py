"""The XLA CPU option siriib_jax runs with: convolutions on XLA's multi-threaded Eigen path.

jax 0.10's CPU backend hands convolutions to YNNPACK "fusions" by default, and in this
build those run on one thread (measurements: BENCHMARKS.md §4). The debug option
`xla_cpu_experimental_ynn_fusion_type`, set empty, turns the YNNPACK fusions off. It is an
option of XLA's CPU compiler; a GPU build accepts it.

XLA reads `XLA_FLAGS` once, when JAX initialises its backends (the first computation or
device query of the process), so `use_eigen_convolutions` must run before that;
`runtime.configure_process` (called first thing by `main.py`) calls it. A value the user already set for the option in `XLA_FLAGS` is kept.
"""

import os
from typing import Mapping, MutableMapping

OPTION = "xla_cpu_experimental_ynn_fusion_type"
FLAG = f"--{OPTION}="


def use_eigen_convolutions(environ: MutableMapping[str, str] = os.environ) -> bool:
  """Appends `FLAG` to `environ['XLA_FLAGS']` unless it already sets `OPTION`.

  Returns:
    Whether `XLA_FLAGS` was changed.
  """
  flags = environ.get("XLA_FLAGS", "")
  if f"--{OPTION}" in flags:
    return False
  environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
  return True


def eigen_convolutions_enabled(environ: Mapping[str, str] = os.environ) -> bool:
  """Whether `environ['XLA_FLAGS']` sets `OPTION` empty (the Eigen path), e.g. after
  `use_eigen_convolutions`. `models/conv.py` picks its kernel gradient by it."""
  return FLAG in environ.get("XLA_FLAGS", "").split()
