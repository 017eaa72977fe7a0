"""The command line of `python main.py` and of the installed `siriib-jax` command (the same
flags); see `main.py` for the modes.

    siriib-jax --config configs/quickstart.py --workdir /tmp/siriib_quickstart [--mode=eval]
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from siriib_jax import complexity, export, paper
from siriib_jax.configs import default as default_config
from siriib_jax.checkpointing import CheckpointError
from siriib_jax.config_errors import ConfigError
from siriib_jax.config_validation import check_known_keys
from siriib_jax.data import DatasetNotFoundError
from siriib_jax.evaluate import MODES as EVALUATION_MODES, evaluate
from siriib_jax.runtime import configure_process
from siriib_jax.train import NonFiniteLossError, train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_MODE = flags.DEFINE_enum("mode", "train",
                          ["train", "complexity", "export", "paper", *EVALUATION_MODES],
                          "What to run.")
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
  if _MULTIHOST.value:
    initialize_multihost()
  config = _CONFIG.value
  try:
    check_known_keys(config, default_config.get_config())
    if _MODE.value == "complexity":
      print(complexity.describe(config))
      return
    if not _WORKDIR.value:
      raise app.UsageError(f"--workdir is required for --mode={_MODE.value}.")
    if _MODE.value in EVALUATION_MODES:
      evaluate(_MODE.value, config, _WORKDIR.value)
    elif _MODE.value == "export":
      export.run(config, _WORKDIR.value)
    elif _MODE.value == "paper":
      paper.paper(config, _WORKDIR.value)
    else:
      train_and_evaluate(config, _WORKDIR.value)
  except (ConfigError, DatasetNotFoundError, CheckpointError, NonFiniteLossError) as error:
    logging.error("%s", error)
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def run() -> None:
  """Parses the flags and runs `main` (the console script `siriib-jax`)."""
  flags.mark_flags_as_required(["config"])
  app.run(main)


if __name__ == "__main__":
  run()
