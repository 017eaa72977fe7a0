"""Process set-up shared by `main.py`, the tests and the benchmarks: XLA's CPU options and
a start-up log that shows only siriib_jax's own lines unless something is wrong.

Call `configure_process()` first thing, before the first JAX computation: XLA reads
`XLA_FLAGS` once, when JAX initialises its backends, and TensorFlow reads
`TF_CPP_MIN_LOG_LEVEL` when it is first imported (TFDS imports it lazily).
"""

import logging
import os

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
