"""The train state: parameters, optimiser state, step, BatchNorm statistics, TE's ensemble
and the weight average; `create_train_state` initialises it, `update_average` and
`evaluated_variables` are the weight averaging (docs/weight_averaging.md)."""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from siriib_jax.models.siriib import PLACEMENT_KEY
from siriib_jax.runs import averaging_enabled
from siriib_jax.training.optimizer import make_optimizer
from siriib_jax.training.strategies import Strategy, get_strategy


class TrainState(train_state.TrainState):
  """Parameters, optimiser state and step, plus BatchNorm statistics and TE's ensemble.

  Attributes:
    batch_stats: running BatchNorm statistics.
    ensemble: (N_train, K) running average of each training example's predicted
      probabilities (`strategies.TemporalEnsemble`); None for the other strategies.
    averaged_params: the exponential moving average of `params` (the tree of `params`,
      `update_average`) when `config.weight_averaging.decay > 0`; None otherwise (and then
      the state and its checkpoints are those of a run without averaging).
  """
  batch_stats: Any = None
  ensemble: Optional[jnp.ndarray] = None
  averaged_params: Any = None


def averaging_decay(step: jnp.ndarray, config: ml_collections.ConfigDict) -> jnp.ndarray:
  """The decay d of the weight average's update after step `step` (0-based: the number of
  updates applied before this one); float32 scalar.

  With `weight_averaging` keys `decay` D, `warmup_steps` S and `dynamic_decay`:
  d = 0 while step < S (the average copies the parameters), then
  d = min(D, (1 + t) / (10 + t)) with t = step − S when `dynamic_decay` (TensorFlow's
  `ExponentialMovingAverage(num_updates=t)` warm-up, the schedule of DeepMind's
  adversarial_robustness JAX code, `utils.ema_update`, used for Gowal et al. 2020 and
  Rebuffi et al. 2021), else d = D. The warm-up (d = 0.1, 0.18, 0.25, … for t = 0, 1, 2, …)
  makes the average forget the random initialisation within a few updates (its weight is
  ∏ (1 + k) / (10 + k), below 1 % after 3) instead of ~4.6 / (1 − D) of them; d reaches D
  after (10 D − 1) / (1 − D) updates.
  """
  w = config.weight_averaging
  t = jnp.asarray(step, jnp.float32) - w.warmup_steps
  decay = jnp.float32(w.decay)
  if w.dynamic_decay:
    decay = jnp.minimum(decay, (1.0 + t) / (10.0 + jnp.maximum(t, 0.0)))
  return jnp.where(t >= 0, decay, jnp.float32(0.0))


def update_average(averaged, params, step: jnp.ndarray, config: ml_collections.ConfigDict):
  """`averaged · d + params · (1 − d)` leaf by leaf (`optax.incremental_update`), d =
  `averaging_decay(step, config)`; `params` are the parameters after update `step`.

  SiRIIB's exact W is the polar factor of a stored parameter A (`svd.orthonormal_rows`):
  the average is of A, so the averaged model's W = polar(avg A) has orthonormal rows by
  construction (an average of orthonormal W would not)."""
  d = averaging_decay(step, config)
  return optax.incremental_update(params, averaged, 1.0 - d)


def evaluated_variables(state: "TrainState") -> dict:
  """The variables `{'params', 'batch_stats'}` that validation, the best checkpoint and the
  final evaluation use: the weight average when the state has one, else the parameters;
  the BatchNorm statistics are the raw model's running statistics either way
  (docs/weight_averaging.md)."""
  params = state.params if state.averaged_params is None else state.averaged_params
  return {"params": params, "batch_stats": state.batch_stats}


PURIFIER_KEY = PLACEMENT_KEY["purifier"]


def purifier_optimizer(config: ml_collections.ConfigDict,
                       steps_per_epoch: int) -> optax.GradientTransformation:
  """`make_optimizer` twice, for `model.siriib.placement = "purifier"`: one copy on the SR
  purifier's parameters (top-level key `purifier`), one on the rest (the backbone), so that
  neither part's update depends on the other's gradient — `optimizer.clip_global_norm`
  included, which would otherwise scale the backbone's update by the purifier's gradient
  norm. Per parameter the same SGD as `make_optimizer`."""
  labels = lambda params: {k: "purifier" if k == PURIFIER_KEY else "classifier"
                           for k in params}
  return optax.multi_transform({"classifier": make_optimizer(config, steps_per_epoch),
                                "purifier": make_optimizer(config, steps_per_epoch)}, labels)


def create_train_state(model, config: ml_collections.ConfigDict, key: jax.Array,
                       image_shape: tuple[int, int, int], steps_per_epoch: int,
                       num_train_examples: int,
                       strategy: Optional[Strategy] = None) -> TrainState:
  """Initialises the model on a dummy batch; TE's ensemble starts at zero; the weight
  average (with `weight_averaging.decay > 0`) starts at the initial parameters. With
  `model.siriib.placement = "purifier"` (and SiRIIB enabled) the optimiser is
  `purifier_optimizer`.

  Args:
    model: the Flax classifier (`models.create_model`).
    config: the run's config (optimiser keys, `strategy`, `model.num_classes`).
    key: the initialisation key.
    image_shape: (H, W, C) of one image.
    steps_per_epoch: for the learning-rate schedule.
    num_train_examples: rows of TE's ensemble.
    strategy: the run's strategy; default `get_strategy(config)`.

  Every leaf has a fixed dtype (the step counter is a strong int32, not the weakly typed
  `0` of `TrainState.create`), so a fresh state and one restored from a checkpoint give the
  same jitted step program: a resumed run reuses a cached compilation.
  """
  strategy = get_strategy(config) if strategy is None else strategy
  variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32))
  ensemble = None
  if strategy.ensemble is not None:
    ensemble = strategy.ensemble.init(num_train_examples, config.model.num_classes)
  siriib = config.model.siriib
  purifier = siriib.enabled and siriib.placement == "purifier"
  tx = (purifier_optimizer if purifier else make_optimizer)(config, steps_per_epoch)
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables.get("batch_stats", {}), ensemble=ensemble,
                           averaged_params=(variables["params"] if averaging_enabled(config)
                                            else None)).replace(step=jnp.zeros((), jnp.int32))
