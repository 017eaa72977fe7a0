"""The command line of `python main.py` and of the installed `siriib-jax` command (the same
flags); see `main.py` for the modes.

    siriib-jax --config configs/quickstart.py --workdir /tmp/siriib_quickstart [--mode=eval]
"""

import sys
from typing import Callable, NamedTuple, Optional

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from siriib_jax import complexity, export, paper
from siriib_jax.configs import default as default_config
from siriib_jax.config_errors import UserError
from siriib_jax.config_validation import check_known_keys
from siriib_jax.evaluate import evaluate
from siriib_jax.runtime import configure_process, use_compilation_cache
from siriib_jax.train import train_and_evaluate


class Command(NamedTuple):
  """A mode of the command line: `run(config, workdir)`; `workdir` is None where the mode
  needs none."""
  run: Callable
  needs_workdir: bool = True


# The modes, in the order `--help` lists them (main.py describes each).
COMMANDS = {
    "train": Command(train_and_evaluate),
    "eval": Command(lambda config, workdir: evaluate("eval", config, workdir)),
    "svd_study": Command(lambda config, workdir: evaluate("svd_study", config, workdir)),
    "export": Command(export.run),
    "paper": Command(paper.paper),
    "complexity": Command(lambda config, _: print(complexity.describe(config)),
                          needs_workdir=False),
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_MODE = flags.DEFINE_enum("mode", "train", list(COMMANDS), "What to run (main.py).")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Call jax.distributed.initialize() first (TPU pods, "
                               "multi-node GPU, several CPU processes).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --multihost where no cluster is detected: host:port "
    "of process 0 (e.g. localhost:12355 for processes on one machine).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "With --coordinator_address: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "With --coordinator_address: this process, 0-based.")


def initialize_multihost() -> None:
  """Joins the processes of a multi-host run (`jax.distributed.initialize`): the cluster's
  own settings where JAX detects one (Cloud TPU, SLURM, Open MPI, Kubernetes), else the
  three flags. CPU devices of several processes talk through gloo collectives."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  manual = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in manual) and any(v is None for v in manual):
    raise app.UsageError("--coordinator_address, --num_processes and --process_id go "
                         "together; give all three or none (a detected cluster).")
  jax.distributed.initialize(*manual)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  configure_process()  # Before JAX initialises its backends (siriib_jax/runtime.py).
  use_compilation_cache()
  if _MULTIHOST.value:
    initialize_multihost()
  config = _CONFIG.value
  command = COMMANDS[_MODE.value]
  workdir: Optional[str] = _WORKDIR.value
  try:
    check_known_keys(config, default_config.get_config())
    if command.needs_workdir and not workdir:
      raise app.UsageError(f"--workdir is required for --mode={_MODE.value}.")
    command.run(config, workdir)
  except UserError as error:
    logging.error("%s", error)
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def run() -> None:
  """Parses the flags and runs `main` (the console script `siriib-jax`)."""
  flags.mark_flags_as_required(["config"])
  app.run(main)


if __name__ == "__main__":
  run()
