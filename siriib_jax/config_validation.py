"""The config checks that no factory owns: training keys, cross-block rules, evaluation names.

Each block is checked by the factory that builds it — the model block by
`models.create_model`, the dataset block by `data.InputPipeline`, the strategy and its
inner attack by `strategies.get_strategy` — and `train.train_and_evaluate` and
`evaluate.evaluate` call those factories before anything is read or compiled. What is left
is checked here: the optimiser, schedule, loss weights, logging and checkpoint keys, rules
that join two blocks, and the attack names of the evaluation (by a pure parser).
"""

import difflib

import jax
import ml_collections

from siriib_jax.config_errors import ConfigError, fail
from siriib_jax.evaluation.attack_specs import SPECIAL_NAMES, parse_spec


def _positive_int(config, key: str, minimum: int = 1, prefix: str = "") -> None:
  value = config[key]
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    fail(prefix + key, value, f"it must be an integer ≥ {minimum}")


def validate_training_config(config: ml_collections.ConfigDict) -> None:
  """Checks the optimiser, schedule, logging and checkpoint keys."""
  # `batch_size` itself is checked by `data.InputPipeline`, which it sizes.
  for key in ("num_epochs", "log_every_steps", "eval_every_epochs", "keep_checkpoints",
              "eval_pgd_steps"):
    _positive_int(config, key)
  for key in ("checkpoint_every_steps", "final_eval_size"):
    _positive_int(config, key, minimum=0)
  if config.max_steps != -1:
    _positive_int(config, "max_steps")
  if config.seed < 0:
    fail("seed", config.seed, "it must be ≥ 0")
  devices = jax.device_count()
  if isinstance(config.batch_size, int) and config.batch_size % devices:
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


def validate_cross_block_config(config: ml_collections.ConfigDict) -> None:
  """Rules that join two blocks: the model's classes are the dataset's."""
  if config.model.num_classes != config.dataset.num_classes:
    fail("model.num_classes", config.model.num_classes,
         f"it must equal config.dataset.num_classes = {config.dataset.num_classes}")


def validate_evaluation_config(config: ml_collections.ConfigDict) -> None:
  """Checks the attack names of `evaluation.attacks` and `final_eval_attacks` (parsed, not
  built), the evaluation batch size, `evaluation.save_examples` (a bool), and the
  cross-block rules."""
  for key in ("evaluation.attacks", "final_eval_attacks"):
    names = config.evaluation.attacks if key == "evaluation.attacks" else config.final_eval_attacks
    for name in names:
      if name in SPECIAL_NAMES:
        continue
      try:
        parse_spec(name, config.evaluation)
      except (ValueError, KeyError) as error:
        fail(key, tuple(names), f"{name!r} is not an attack ({error}); see docs/evaluation.md")
  _positive_int(config.evaluation, "batch_size", prefix="evaluation.")
  if not isinstance(config.evaluation.save_examples, bool):
    fail("evaluation.save_examples", config.evaluation.save_examples,
         "it must be True or False (write workdir/evaluation/<attack>.npz)")
  validate_cross_block_config(config)


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
  """Checks what no factory owns (see the module docstring) for a training run.

  Raises:
    ConfigError naming the first bad key, its value and what is allowed.
  """
  validate_training_config(config)
  validate_evaluation_config(config)
