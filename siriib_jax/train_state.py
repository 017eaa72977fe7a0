"""The train state and the optimiser of paper §5.1 (SGD, momentum 0.9, weight decay 5e-4,
learning rate 0.1 × 0.1 at epochs 100 and 150)."""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """Parameters, optimiser state and step, plus BatchNorm statistics and TE's ensemble.

  Attributes:
    batch_stats: running BatchNorm statistics.
    ensemble: (N_train, K) running average of each training example's predicted
      probabilities (temporal ensembling); None for the other strategies.
  """
  batch_stats: Any = None
  ensemble: Optional[jnp.ndarray] = None


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """Piecewise-constant: `learning_rate`, times `decay_factor` at each of `decay_epochs`."""
  o = config.optimizer
  return optax.piecewise_constant_schedule(
      o.learning_rate, {int(e * steps_per_epoch): o.decay_factor for e in o.decay_epochs})


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """PyTorch's SGD: the decay `wd · w` joins the gradient before momentum, on every
  parameter (BatchNorm included), as in the paper's PyTorch training.

  With `optimizer.clip_global_norm > 0` the loss gradient is first scaled down to that
  global norm (not in the paper; off by default). It tames the R_τ spikes of SiRIIB
  training: on the CPU probe of BENCHMARKS.md §3c (bf16 branch, identical seeds) R_τ
  spiked to 2e9 at step 18 without clipping and grew smoothly to 1.4e3 in 25 steps with a
  norm of 10.
  """
  o = config.optimizer
  clip = [optax.clip_by_global_norm(o.clip_global_norm)] if o.clip_global_norm > 0 else []
  return optax.chain(
      *clip,
      optax.add_decayed_weights(o.weight_decay),
      optax.sgd(learning_rate_schedule(config, steps_per_epoch), momentum=o.momentum))


def create_train_state(model, config: ml_collections.ConfigDict, key: jax.Array,
                       image_shape: tuple[int, int, int], steps_per_epoch: int,
                       num_train_examples: int) -> TrainState:
  """Initialises the model on a dummy batch; TE's ensemble starts at zero.

  Every leaf has a fixed dtype (the step counter is a strong int32, not the weakly typed
  `0` of `TrainState.create`), so a fresh state and one restored from a checkpoint give the
  same jitted step program: a resumed run reuses a cached compilation."""
  variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32))
  ensemble = None
  if config.strategy == "te":
    ensemble = jnp.zeros((num_train_examples, config.model.num_classes), jnp.float32)
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           tx=make_optimizer(config, steps_per_epoch),
                           batch_stats=variables.get("batch_stats", {}),
                           ensemble=ensemble).replace(step=jnp.zeros((), jnp.int32))
