"""The train state: parameters, optimiser state, step, BatchNorm statistics and TE's
ensemble; `create_train_state` initialises it."""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from siriib_jax.models.siriib import PLACEMENT_KEY
from siriib_jax.optimizer import make_optimizer
from siriib_jax.strategies import Strategy, get_strategy


class TrainState(train_state.TrainState):
  """Parameters, optimiser state and step, plus BatchNorm statistics and TE's ensemble.

  Attributes:
    batch_stats: running BatchNorm statistics.
    ensemble: (N_train, K) running average of each training example's predicted
      probabilities (`strategies.TemporalEnsemble`); None for the other strategies.
  """
  batch_stats: Any = None
  ensemble: Optional[jnp.ndarray] = None


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
  """Initialises the model on a dummy batch; TE's ensemble starts at zero. With
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
                           batch_stats=variables.get("batch_stats", {}),
                           ensemble=ensemble).replace(step=jnp.zeros((), jnp.int32))
