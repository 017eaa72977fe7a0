"""Process set-up shared by `main.py`, the tests and the benchmarks: XLA's CPU options, a
start-up log that shows only siriib_jax's own lines unless something is wrong, and (for the
command line) JAX's persistent compilation cache.

Call `configure_process()` first thing, before the first JAX computation: XLA reads
`XLA_FLAGS` once, when JAX initialises its backends, and TensorFlow reads
`TF_CPP_MIN_LOG_LEVEL` when it is first imported (TFDS imports it lazily).
"""

import logging
import os
from typing import Mapping, Optional

import jax

from siriib_jax.xla_cpu import use_eigen_convolutions

# Informational start-up lines of the libraries below, on every start of a CPU machine:
# jax's "Unable to initialize backend 'tpu'" (INFO) and TensorFlow's oneDNN and CPU-feature
# notices (its C++ INFO level). Their warnings and errors still show.
_QUIET_LOGGERS = ("jax._src.xla_bridge",)


class _QuietOrbax(logging.Filter):
  """Keeps orbax's per-save INFO chatter out of the log; its warnings still show."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def configure_process() -> None:
  """Sets the XLA CPU option of `xla_cpu.py` and quietens third-party start-up notices.

  A value the user already set (`XLA_FLAGS`, `TF_CPP_MIN_LOG_LEVEL`) is kept.
  """
  use_eigen_convolutions()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  for name in _QUIET_LOGGERS:
    logging.getLogger(name).setLevel(logging.WARNING)
  for handler in logging.getLogger().handlers:
    if not any(isinstance(f, _QuietOrbax) for f in handler.filters):
      handler.addFilter(_QuietOrbax())


# Where the command line keeps compiled programs between runs, unless the environment says
# otherwise: `SIRIIB_JAX_COMPILATION_CACHE` = a folder, or `off`; JAX's own
# `JAX_COMPILATION_CACHE_DIR` is kept where set.
CACHE_VARIABLE = "SIRIIB_JAX_COMPILATION_CACHE"


def compilation_cache_dir(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """The folder of the persistent compilation cache: `$SIRIIB_JAX_COMPILATION_CACHE`, else
  `$XDG_CACHE_HOME/siriib_jax/xla` (`~/.cache/siriib_jax/xla`); None where the variable is
  `off` (or empty) or `JAX_COMPILATION_CACHE_DIR` already chooses one."""
  if "JAX_COMPILATION_CACHE_DIR" in environ:
    return None
  value = environ.get(CACHE_VARIABLE)
  if value is not None:
    return None if value.strip().lower() in ("", "off", "0", "false", "none") else value
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "siriib_jax", "xla")


def use_compilation_cache(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """Turns on JAX's persistent compilation cache in `compilation_cache_dir(environ)`, so a
  repeated `--mode=eval` or a resumed training run loads its programs instead of compiling
  them again (programs that compiled in under a second are not stored). Returns the folder,
  or None where the cache is left as JAX has it."""
  directory = compilation_cache_dir(environ)
  if directory is not None:
    jax.config.update("jax_compilation_cache_dir", directory)
  return directory
