"""Shared test fixtures: the default config and small helpers."""

import os
import sys

import jax
import pytest

# The repository root, so that tests import `tests.helpers` and `tests.linear_oracle`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from siriib_jax.configs import default  # noqa: E402  pylint: disable=wrong-import-position
from siriib_jax.runtime import configure_process  # noqa: E402

# As main.py runs; before the first computation initialises the backend.
configure_process()
# The tests compile many small programs and run each for moments: XLA:CPU's LLVM code
# generation is most of their time (the tiny train step: 32 of 40 s). Its cheapest
# optimisation level compiles that step in 27 s instead of 43 s and runs it in 0.2 s
# instead of 0.1 s. Only the tests use it (main.py and the benchmarks do not); it changes
# how fast the code runs, not what it computes.
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                    "--xla_backend_optimization_level=0",
                                    "--xla_llvm_disable_expensive_passes=true"]).strip()


# Tests build the same small steps again and again (each `train_and_evaluate` jits anew):
# a persistent compilation cache lets XLA compile each of them once per session.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.environ.get("TMPDIR", "/tmp"), "siriib_jax_test_xla_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def config():
  return default.get_config()


@pytest.fixture
def npz_dir(tmp_path):
  """`name = "npz"` data: 1,000 identifiable training images, 230 test images."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from tests import data_helpers  # pylint: disable=import-outside-toplevel
  for split, n in (("train", 1000), ("test", 230)):
    image, label = data_helpers.identifiable(n, seed=len(split))
    np.savez(tmp_path / f"{split}.npz", image=image, label=label)
  return tmp_path


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Frees each test module's compiled programs when it ends. Every loaded XLA:CPU
  executable holds memory maps, and the whole suite's programs together exceed Linux's
  default `vm.max_map_count` (65,530), past which compilation crashes the process."""
  yield
  jax.clear_caches()


@pytest.fixture
def compile_events():
  """Records every XLA compilation event while the test runs (names containing
  "compile"; a backend compilation is `/jax/core/compile/backend_compile_duration`)."""
  events = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if "compile" in event:
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  yield events
  jax.monitoring.unregister_event_duration_listener(listener)
