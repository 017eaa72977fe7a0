"""The optimiser and learning-rate schedule of paper §5.1: SGD, momentum 0.9, weight decay
5e-4, learning rate 0.1 × 0.1 at epochs 100 and 150 (`config.optimizer`)."""

import collections

import ml_collections
import optax


def decay_steps(decay_epochs, steps_per_epoch: int) -> list[int]:
  """The step of each milestone of `decay_epochs`: `int(epoch · steps_per_epoch)`, rounded
  down, so that a fractional epoch decays at the first step of its partial epoch (1.5 at 10
  steps per epoch: step 15; 1.1 at 3 steps per epoch: step 3). Milestones that round to the
  same step each keep their decay there."""
  return [int(e * steps_per_epoch) for e in decay_epochs]


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """Piecewise-constant: `learning_rate`, times `decay_factor` at each of `decay_epochs`
  (PyTorch's `MultiStepLR`): the rate at step s is `learning_rate · decay_factor^m`, m the
  number of milestones at or before s (`decay_steps`; milestones at the same step count
  each, so `(1, 1)` decays by `decay_factor²` at epoch 1).

  Returns:
    An optax schedule `step -> learning rate`.
  """
  o = config.optimizer
  boundaries = collections.Counter(decay_steps(o.decay_epochs, steps_per_epoch))
  return optax.piecewise_constant_schedule(
      o.learning_rate, {step: o.decay_factor ** count for step, count in boundaries.items()})


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
