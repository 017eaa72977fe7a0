"""`main.py --mode=eval` and `--mode=svd_study`: a training run's checkpoint, evaluated.

Both load `checkpointing.load_variables(workdir, config.evaluation.checkpoint)`, build the
configured model and the test split (`config.evaluation.subset_size`, `.seed`), and write
their files to `workdir/evaluation/`.
"""

import os

import jax.numpy as jnp
import ml_collections

from siriib_jax.checkpointing import load_variables
from siriib_jax.config_validation import validate_evaluation_config
from siriib_jax.data import InputPipeline, validate_dataset_config
from siriib_jax.evaluation.robustness import evaluate_robustness
from siriib_jax.evaluation.svd_study import svd_study
from siriib_jax.models import create_model, validate_model_config

MODES = ("eval", "svd_study")


def run(mode: str, config: ml_collections.ConfigDict, workdir: str):
  """Runs `mode` ('eval' or 'svd_study') on the checkpoint of `workdir`.

  Returns:
    The `Report` (eval) or the study's summary dict (svd_study).
  Raises:
    CheckpointError: no readable checkpoint in `workdir`.
    ConfigError, DatasetNotFoundError: as for training.
  """
  evaluation = config.evaluation
  validate_model_config(config.model, config.dataset.image_size)
  validate_dataset_config(config.dataset, training=False,
                          model_num_classes=config.model.num_classes)
  validate_evaluation_config(config)
  model = create_model(config.model, config.dataset.image_size,
                       jnp.bfloat16 if config.half_precision else jnp.float32)
  variables, step = load_variables(workdir, evaluation.checkpoint)
  data = InputPipeline(config.dataset, global_batch_size=evaluation.batch_size,
                       seed=config.seed, training=False)
  directory = os.path.join(os.path.abspath(workdir), "evaluation")
  if mode == "eval":
    name = config.model.name + ("-SR" if config.model.siriib.enabled else "")
    return evaluate_robustness(model, variables, config, data, directory=directory,
                               meta={"model": name, "checkpoint": evaluation.checkpoint,
                                     "step": int(step), "workdir": workdir})
  if mode == "svd_study":
    return svd_study(model, variables, config, data, directory=directory)
  raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
