"""Entry point: `python main.py --config configs/cifar10_r18.py --workdir /tmp/run`.

Modes:
  complexity  print the parameters and MACs of the configured model (no workdir needed).
              `python -m siriib_jax.complexity` prints the rows of the paper's Tables 3, 5.
"""

from absl import app, flags
from ml_collections import config_flags

from siriib_jax import complexity

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "complexity"], "What to run.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if _MODE.value == "complexity":
    print(complexity.describe(config))
    return
  raise app.UsageError("--mode=train is not implemented yet (issue 4).")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
