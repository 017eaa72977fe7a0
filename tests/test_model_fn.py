"""models/model_fn: the model as a function of the image, for attacks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax.models import ModelOutput, logits_fn, outputs_fn


class Normalised(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.BatchNorm(use_running_average=not train)(x.reshape(x.shape[0], -1))
    return ModelOutput(nn.Dense(3)(h), x_avg=x)


def _setup():
  model = Normalised()
  x = jax.random.uniform(jax.random.key(0), (4, 2, 2, 3))
  return model, model.init(jax.random.key(1), x), x


def test_eval_mode_is_per_example_and_train_mode_uses_the_batch():
  model, variables, x = _setup()
  eval_fn, train_fn = logits_fn(model, variables), logits_fn(model, variables, "train")
  np.testing.assert_allclose(eval_fn(x)[:2], eval_fn(x[:2]), rtol=1e-6)
  assert not np.allclose(train_fn(x)[:2], train_fn(x[:2]), rtol=1e-3)
  assert eval_fn(x).dtype == jnp.float32 and eval_fn(x).shape == (4, 3)


def test_outputs_fn_returns_the_whole_output_and_variables_are_jit_leaves():
  model, variables, x = _setup()
  out = outputs_fn(model, variables)(x)
  np.testing.assert_array_equal(out.x_avg, x)
  other = jax.tree.map(lambda p: p + 1.0, variables)
  run = jax.jit(lambda fn, v: fn(v))
  run(logits_fn(model, variables), x)
  compiles = []
  listener = lambda event, duration, **kw: compiles.append(event) if "compile" in event else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    run(logits_fn(model, other), x)  # New parameters, same program.
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiles


def test_an_unknown_batch_norm_mode_is_refused():
  model, variables, _ = _setup()
  with pytest.raises(ValueError, match="batch_norm must be one of"):
    logits_fn(model, variables, "frozen")
