"""The optimiser and learning-rate schedule of paper §5.1: SGD, momentum 0.9, weight decay
5e-4, learning rate 0.1 × 0.1 at epochs 100 and 150 (`config.optimizer`)."""

import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """Piecewise-constant: `learning_rate`, times `decay_factor` at each of `decay_epochs`.

  Returns:
    An optax schedule `step -> learning rate`.
  """
  o = config.optimizer
  return optax.piecewise_constant_schedule(
      o.learning_rate, {int(e * steps_per_epoch): o.decay_factor for e in o.decay_epochs})


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """PyTorch's SGD: the decay `wd · w` joins the gradient before momentum, on every
  parameter (BatchNorm included), as in the paper's PyTorch training.

  With `optimizer.clip_global_norm > 0` the loss gradient is first scaled down to that
  global norm (not in the paper; off by default; its effect on R_τ: RESULTS.md).

  Returns:
    An `optax.GradientTransformation`.
  """
  o = config.optimizer
  clip = [optax.clip_by_global_norm(o.clip_global_norm)] if o.clip_global_norm > 0 else []
  return optax.chain(
      *clip,
      optax.add_decayed_weights(o.weight_decay),
      optax.sgd(learning_rate_schedule(config, steps_per_epoch), momentum=o.momentum))
