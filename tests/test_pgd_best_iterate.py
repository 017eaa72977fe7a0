"""PGD for evaluation keeps the first adversarial iterate (a point is broken when any
iterate was misclassified inside the ε-ball); `keep='last'`, training's inner maximisation,
returns the last iterate (docs/evaluation.md).

The model is linear, `z = (0.5, x)` on one-pixel images, so class 0 is predicted iff
x < 0.5, and the loss `−(z_1 − z_0)²` pulls every iterate towards the boundary: from
x = 0.45 with sign steps of 0.03 (no random start) the iterates are 0.45, 0.48, 0.51
(misclassified), 0.48, 0.51, … — after 3 steps the last iterate is classified correctly
while the second was not.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax import attacks
from siriib_jax.attacks.objectives import cw_margin
from tests.linear_oracle import linear_logits

W = np.array([[0.0, 1.0]], np.float32)
B = np.array([0.5, 0.0], np.float32)
EPS, STEP = 0.1, 0.03


def logits_fn(x):
  return linear_logits(jnp.asarray(W), jnp.asarray(B), x)


def to_boundary(logits, y):
  return -cw_margin(logits, y) ** 2


def point():
  return jnp.full((1, 1, 1, 1), 0.45), jnp.zeros((1,), jnp.int32)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("restarts", [1, 2])
def test_pgd_reports_an_earlier_adversarial_iterate_and_returns_it(norm, restarts):
  x, y = point()
  attack = attacks.pgd(EPS, STEP, 3, norm, loss=to_boundary, random_start=False,
                       restarts=restarts)
  result = attack(logits_fn, x, y, jax.random.key(0))
  x_adv = np.asarray(result.x_adv)
  assert bool(result.success[0])
  np.testing.assert_allclose(x_adv.ravel(), [0.51], atol=1e-6)
  assert np.argmax(logits_fn(x_adv), -1)[0] != 0  # Misclassified …
  assert np.abs(x_adv - np.asarray(x)).max() <= EPS  # … inside the ε-ball.


def test_training_form_keeps_the_last_iterate():
  x, y = point()
  attack = attacks.pgd(EPS, STEP, 3, loss=to_boundary, random_start=False, keep="last")
  result = attack(logits_fn, x, y, jax.random.key(0))
  np.testing.assert_allclose(np.asarray(result.x_adv).ravel(), [0.48], atol=1e-6)
  assert not bool(result.success[0])


def test_a_misclassified_start_counts():
  # Starting at the boundary's far side (x = 0.51 is misclassified): broken at step 0,
  # although every later iterate (0.48, 0.51, 0.48) alternates.
  x, y = jnp.full((1, 1, 1, 1), 0.51), jnp.zeros((1,), jnp.int32)
  attack = attacks.pgd(EPS, STEP, 2, loss=to_boundary, random_start=False)
  result = attack(logits_fn, x, y, jax.random.key(0))
  assert bool(result.success[0])
  np.testing.assert_allclose(np.asarray(result.x_adv).ravel(), [0.51], atol=1e-6)


def test_unknown_keep_is_refused():
  with pytest.raises(ValueError, match="keep must be one of"):
    attacks.pgd(EPS, STEP, 3, keep="best")
