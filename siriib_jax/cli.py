"""The command line of `python main.py` and of the installed `siriib-jax` command (the same
flags); see `main.py` for the modes.

    siriib-jax --config configs/quickstart.py --workdir /tmp/siriib_quickstart [--mode=eval]
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from siriib_jax import complexity, export
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
_MODE = flags.DEFINE_enum("mode", "train", ["train", "complexity", "export", *EVALUATION_MODES],
                          "What to run.")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Call jax.distributed.initialize() first (TPU pods, "
                               "multi-node GPU).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  configure_process()  # Before JAX initialises its backends (siriib_jax/runtime.py).
  if _MULTIHOST.value:
    jax.distributed.initialize()
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
