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
from siriib_jax.evaluation.attack_specs import (SPECIAL_NAMES, checklist_spec, parse_spec,
                                                validate_threat_models)


def _positive_int(config, key: str, minimum: int = 1, prefix: str = "") -> None:
  value = config[key]
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    fail(prefix + key, value, f"it must be an integer ≥ {minimum}")


def _bool_or_int(value, key: str) -> None:
  """A loop's `unroll` (`configs/default.bool_or_int`): True, False or an integer ≥ 1."""
  if not isinstance(value, (bool, int)) or (not isinstance(value, bool) and value < 1):
    fail(key, value, "it must be True (unroll the attack's step loop), False (keep it rolled) "
         "or an integer ≥ 1 (unroll that many steps), e.g. --config." + key + "=4")


def validate_training_config(config: ml_collections.ConfigDict) -> None:
  """Checks the optimiser, schedule, logging and checkpoint keys, and the loop form of the
  inner attack (`attack.unroll`)."""
  # `batch_size` itself is checked by `data.InputPipeline`, which it sizes.
  for key in ("num_epochs", "log_every_steps", "eval_every_epochs", "keep_checkpoints",
              "eval_pgd_steps"):
    _positive_int(config, key)
  for key in ("checkpoint_every_steps", "final_eval_size"):
    _positive_int(config, key, minimum=0)
  if config.max_steps != -1:
    _positive_int(config, "max_steps")
  _bool_or_int(config.attack.unroll, "attack.unroll")
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
  epochs = o.decay_epochs
  if (not isinstance(epochs, (tuple, list))
      or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in epochs)
      or any(not e > 0 for e in epochs) or list(epochs) != sorted(epochs)):
    fail("optimizer.decay_epochs", epochs,
         "it must be positive epochs in increasing order, e.g. (100, 150), where a repeated "
         "epoch decays once per repeat, e.g. (100, 100), and a fractional one at step "
         "int(epoch · steps per epoch)")
  if not 0 < o.decay_factor <= 1:
    fail("optimizer.decay_factor", o.decay_factor, "it must be in (0, 1]")
  if not o.clip_global_norm >= 0:
    fail("optimizer.clip_global_norm", o.clip_global_norm, "it must be ≥ 0 (0: no clipping)")
  for key in ("lambda1", "lambda2", "variance_weight", "variance_target"):
    if config.loss[key] < 0:
      fail(f"loss.{key}", config.loss[key], "it must be ≥ 0")
  if config.loss.svd_eps <= 0:
    fail("loss.svd_eps", config.loss.svd_eps, "it must be > 0")
  validate_weight_averaging_config(config)


def validate_weight_averaging_config(config: ml_collections.ConfigDict) -> None:
  """Checks `weight_averaging` (decay in [0, 1), warmup_steps ≥ 0, dynamic_decay a bool)."""
  w = config.weight_averaging
  if isinstance(w.decay, bool) or not isinstance(w.decay, (int, float)) or not 0 <= w.decay < 1:
    fail("weight_averaging.decay", w.decay,
         "it must be in [0, 1) (0: off; e.g. 0.995, DeepMind's adversarial_robustness)")
  _positive_int(w, "warmup_steps", minimum=0, prefix="weight_averaging.")
  if not isinstance(w.dynamic_decay, bool):
    fail("weight_averaging.dynamic_decay", w.dynamic_decay, "it must be True or False")


def validate_cross_block_config(config: ml_collections.ConfigDict) -> None:
  """Rules that join two blocks: the model's classes are the dataset's."""
  if config.model.num_classes != config.dataset.num_classes:
    fail("model.num_classes", config.model.num_classes,
         f"it must equal config.dataset.num_classes = {config.dataset.num_classes}")


def validate_evaluation_config(config: ml_collections.ConfigDict) -> None:
  """Checks the radii and step sizes of the evaluation in [0, 1] pixel units
  (`attack_specs.validate_threat_models`: `evaluation.linf.eps = 8` is refused, 8/255 is
  meant), the attack names of `evaluation.attacks`, `final_eval_attacks`,
  `evaluation.svd_study.attacks` / `grid_attacks`, `evaluation.skip_ablation` and
  `checklist.large_eps_attack` (parsed
  by `attack_specs`, not built), the evaluation batch size, `evaluation.unroll`,
  `evaluation.save_examples` (a bool), and the cross-block rules."""
  size = config.dataset.image_size  # Every dataset's images have 3 channels.
  validate_threat_models(config.evaluation, (size, size, 3) if isinstance(size, int) else None)
  lists = {"evaluation.attacks": config.evaluation.attacks,
           "final_eval_attacks": config.final_eval_attacks,
           # The SVD swap study runs registry names only (no clean, no adaptive).
           "evaluation.svd_study.attacks": config.evaluation.svd_study.attacks,
           "evaluation.svd_study.grid_attacks": config.evaluation.svd_study.grid_attacks,
           # Clean and single attacks (no adaptive) on the model without its skip features.
           "evaluation.skip_ablation": config.evaluation.skip_ablation}
  for key, names in lists.items():
    for name in names:
      special = {"clean"} if key == "evaluation.skip_ablation" else SPECIAL_NAMES
      if name in special and not key.startswith("evaluation.svd_study"):
        continue
      try:
        parse_spec(name, config.evaluation)
      except (ValueError, KeyError) as error:
        # `--config.evaluation.attacks=(clean,pgd20)` arrives as one name.
        hint = (f"; on the command line a tuple is --config.{key}=\"('clean', 'pgd20')\" or "
                f"one --config.{key}=NAME per name" if "," in name or "(" in name else "")
        fail(key, tuple(names),
             f"{name!r} is not an attack ({error}){hint}; see docs/evaluation.md")
  _positive_int(config.evaluation, "batch_size", prefix="evaluation.")
  _bool_or_int(config.evaluation.unroll, "evaluation.unroll")
  checklist_spec(config.evaluation)  # `checklist.large_eps_attack`, as the evaluation runs it.
  validate_weight_averaging_config(config)  # It chooses the weights evaluated.
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
