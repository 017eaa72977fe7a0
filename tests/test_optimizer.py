"""optimizer: the learning-rate schedule's milestones (PyTorch's MultiStepLR semantics)."""

import numpy as np
import pytest

from siriib_jax import config_validation
from siriib_jax.training import optimizer
from siriib_jax.config_errors import ConfigError
from siriib_jax.configs import default


def _schedule(decay_epochs, steps_per_epoch, learning_rate=0.1, factor=0.5):
  config = default.get_config()
  config.optimizer.learning_rate = learning_rate
  config.optimizer.decay_factor = factor
  config.optimizer.decay_epochs = decay_epochs
  return optimizer.learning_rate_schedule(config, steps_per_epoch)


def _rates(schedule, steps):
  return np.array([float(schedule(s)) for s in range(steps)])


def test_milestones_apply_at_their_steps():
  rates = _rates(_schedule((1, 2), 3), 8)
  np.testing.assert_allclose(rates, [0.1] * 3 + [0.05] * 3 + [0.025] * 2, rtol=1e-6)


def test_a_repeated_milestone_decays_once_per_repeat():
  rates = _rates(_schedule((1, 1), 3), 6)
  np.testing.assert_allclose(rates, [0.1] * 3 + [0.1 * 0.5 ** 2] * 3, rtol=1e-6)


def test_fractional_milestones_on_one_step_keep_both_decays():
  # 1.1 and 1.2 epochs at 3 steps per epoch both round down to step 3.
  assert optimizer.decay_steps((1.1, 1.2), 3) == [3, 3]
  rates = _rates(_schedule((1.1, 1.2), 3), 6)
  np.testing.assert_allclose(rates, [0.1] * 3 + [0.1 * 0.5 ** 2] * 3, rtol=1e-6)


def test_a_fractional_milestone_rounds_down():
  assert optimizer.decay_steps((1.5, 2.99), 10) == [15, 29]
  rates = _rates(_schedule((1.5,), 10), 17)
  assert rates[14] == pytest.approx(0.1) and rates[15] == pytest.approx(0.05)


@pytest.mark.parametrize("epochs", [(2, 1), (150, 100), (0, 1), (-1,), (True,), ("100",)])
def test_validation_refuses_decreasing_or_non_positive_milestones(epochs):
  config = default.get_config()
  config.optimizer.decay_epochs = epochs
  with pytest.raises(ConfigError, match=r"config\.optimizer\.decay_epochs.*increasing order.*a "
                     r"repeated epoch decays once per repeat"):
    config_validation.validate_training_config(config)


@pytest.mark.parametrize("epochs", [(1, 1), (1.1, 1.2), (100, 150), ()])
def test_validation_accepts_non_decreasing_milestones(epochs):
  config = default.get_config()
  config.optimizer.decay_epochs = epochs
  config_validation.validate_training_config(config)
