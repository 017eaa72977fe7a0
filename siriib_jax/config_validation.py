"""`validate_config`: every config value checked before anything is read or compiled."""

import difflib

import jax
import ml_collections

from siriib_jax.config_errors import ConfigError, fail
from siriib_jax.data import validate_dataset_config
from siriib_jax.evaluation.suite import parse_spec
from siriib_jax.models import validate_model_config
from siriib_jax.strategies import validate_strategy_config


def _positive_int(config, key: str, minimum: int = 1, prefix: str = "") -> None:
  value = config[key]
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    fail(prefix + key, value, f"it must be an integer ≥ {minimum}")


def validate_training_config(config: ml_collections.ConfigDict) -> None:
  """Checks the optimiser, schedule, logging and checkpoint keys."""
  for key in ("num_epochs", "batch_size", "log_every_steps", "eval_every_epochs",
              "keep_checkpoints", "eval_pgd_steps"):
    _positive_int(config, key)
  for key in ("checkpoint_every_steps", "final_eval_size"):
    _positive_int(config, key, minimum=0)
  if config.max_steps != -1:
    _positive_int(config, "max_steps")
  if config.seed < 0:
    fail("seed", config.seed, "it must be ≥ 0")
  devices = jax.device_count()
  if config.batch_size % devices:
    fail("batch_size", config.batch_size,
         f"it must be divisible by the number of devices ({devices})")
  o = config.optimizer
  if not o.learning_rate > 0:
    fail("optimizer.learning_rate", o.learning_rate, "it must be > 0")
  if not 0 <= o.momentum < 1:
    fail("optimizer.momentum", o.momentum, "it must be in [0, 1)")
  if o.weight_decay < 0:
    fail("optimizer.weight_decay", o.weight_decay, "it must be ≥ 0")
  if list(o.decay_epochs) != sorted(o.decay_epochs) or any(e <= 0 for e in o.decay_epochs):
    fail("optimizer.decay_epochs", tuple(o.decay_epochs),
         "it must be increasing positive epochs, e.g. (100, 150)")
  if not 0 < o.decay_factor <= 1:
    fail("optimizer.decay_factor", o.decay_factor, "it must be in (0, 1]")
  if not o.clip_global_norm >= 0:
    fail("optimizer.clip_global_norm", o.clip_global_norm, "it must be ≥ 0 (0: no clipping)")
  for key in ("lambda1", "lambda2"):
    if config.loss[key] < 0:
      fail(f"loss.{key}", config.loss[key], "it must be ≥ 0")
  if config.loss.svd_eps <= 0:
    fail("loss.svd_eps", config.loss.svd_eps, "it must be > 0")


def validate_evaluation_config(config: ml_collections.ConfigDict) -> None:
  """Checks the attack names of `evaluation.attacks` and `final_eval_attacks`."""
  for key in ("evaluation.attacks", "final_eval_attacks"):
    names = config.evaluation.attacks if key == "evaluation.attacks" else config.final_eval_attacks
    for name in names:
      if name in ("clean", "adaptive"):
        continue
      try:
        parse_spec(name, config.evaluation)
      except (ValueError, KeyError) as error:
        fail(key, tuple(names), f"{name!r} is not an attack ({error}); see docs/evaluation.md")
  _positive_int(config.evaluation, "batch_size", prefix="evaluation.")


def check_known_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
                     prefix: str = "") -> None:
  """Every key of `config` must exist in `reference` (the defaults): catches typos in a
  config file, which ml_collections would otherwise keep silently."""
  for key, value in config.items():
    path = f"{prefix}{key}"
    if key not in reference:
      close = difflib.get_close_matches(key, list(reference.keys()), n=1)
      hint = f"; did you mean config.{prefix}{close[0]}?" if close else ""
      raise ConfigError(f"config.{path} is not a known key{hint} The keys are those of "
                        f"configs/default.py.")
    if isinstance(value, ml_collections.ConfigDict) and isinstance(reference[key],
                                                                    ml_collections.ConfigDict):
      check_known_keys(value, reference[key], prefix=f"{path}.")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the whole config; raises `ConfigError` naming the first bad key."""
  validate_model_config(config.model, config.dataset.image_size)
  validate_dataset_config(config.dataset, global_batch_size=config.batch_size,
                          model_num_classes=config.model.num_classes)
  validate_strategy_config(config)
  validate_training_config(config)
  validate_evaluation_config(config)
