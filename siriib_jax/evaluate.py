"""`evaluate(mode, config, workdir)`: a training run's checkpoint, evaluated — the entry point
of `main.py --mode=eval` and `--mode=svd_study`, beside `train.train_and_evaluate`.

Both open the run with `runs.open_run(workdir, config)` — the checkpoint
`config.evaluation.checkpoint`, its weight average when `weight_averaging.decay > 0`
(docs/weight_averaging.md), the report's `meta.weights` saying "averaged" or "raw" — build
the test split (`config.evaluation.subset_size`, `.seed`), and write
their files to `workdir/evaluation/` (docs/evaluation.md). With several hosts
(`--multihost`) each evaluates its share of the test points (`evaluation.batch_size` a
multiple of the host count), the results are gathered, and only process 0 writes.
"""

import os

import ml_collections

from siriib_jax.config_validation import validate_evaluation_config
from siriib_jax.data import InputPipeline
from siriib_jax.evaluation import evaluate_robustness, svd_study
from siriib_jax.models import create_model
from siriib_jax.runs import open_run

MODES = ("eval", "svd_study")


def evaluate(mode: str, config: ml_collections.ConfigDict, workdir: str):
  """Runs `mode` ('eval' or 'svd_study') on the checkpoint of `workdir`.

  Every check runs before anything is read or compiled: the evaluation keys here, the model
  block in `create_model`, the dataset block in `InputPipeline`.

  Returns:
    The `Report` (eval) or the study's summary dict (svd_study).
  Raises:
    ValueError: `mode` is not one of `MODES`.
    CheckpointError: no readable checkpoint in `workdir`, or one of another model or mode
      (the message names the variables that differ).
    ConfigError, DatasetNotFoundError: as for training.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  evaluation = config.evaluation
  validate_evaluation_config(config)
  create_model(config.model, config.dataset.image_size)  # Checks config.model first.
  data = InputPipeline(config.dataset, global_batch_size=evaluation.batch_size,
                       seed=config.seed, training=False)
  run = open_run(workdir, config)
  directory = os.path.join(os.path.abspath(workdir), "evaluation")
  if mode == "eval":
    return evaluate_robustness(run.model, run.variables, config, data, directory=directory,
                               meta={"model": run.name("short"), "checkpoint": run.checkpoint,
                                     "step": run.step, "workdir": workdir,
                                     "weights": run.weights})
  return svd_study(run.model, run.variables, config, data, directory=directory)
