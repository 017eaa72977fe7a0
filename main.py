"""Entry point, as in flax `examples/imagenet`:

    python main.py --config configs/cifar10_r18.py --workdir /tmp/r18 [--config.num_epochs=1]

Modes:
  train       train the configured model and strategy (resumes from `workdir`).
  complexity  print the parameters and MACs of the configured model (no workdir needed).
              `python -m siriib_jax.complexity` prints the rows of the paper's Tables 3, 5.
  eval        evaluate the run's checkpoint (`config.evaluation`): robustness table and
              masking checklist in `workdir/evaluation/` (docs/evaluation.md).
  export      write the run's checkpoint as PyTorch-named tensors (safetensors) and its
              architecture in `workdir/export/` (siriib_jax/export.py).
  svd_study   the SVD swap study of paper §3.1 (Fig. 1-2) in `workdir/evaluation/`.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from configs import default as default_config
from siriib_jax import complexity, export
from siriib_jax.checkpointing import CheckpointError
from siriib_jax.config_errors import ConfigError
from siriib_jax.config_validation import check_known_keys
from siriib_jax.data import DatasetNotFoundError
from siriib_jax.evaluate import MODES as EVALUATION_MODES, evaluate
from siriib_jax.train import NonFiniteLossError, train_and_evaluate
from siriib_jax.runtime import configure_process

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


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
