"""evaluation/svd_study: the singular-value swap of paper §3.1."""

import numpy as np

from siriib_jax.evaluation import swap_accuracies
from siriib_jax.models import logits_fn
from tests.helpers import LinearClassifier, self_labelled_points


def test_swap_with_own_singular_values_changes_nothing():
  model = LinearClassifier()
  variables, x, y = self_labelled_points(model)
  fn = logits_fn(model, variables)
  x_adv = np.clip(x + np.random.default_rng(1).uniform(-0.1, 0.1, x.shape), 0, 1)
  x_adv = x_adv.astype(np.float32)
  accuracy_adv, accuracy_swap, x_swap = swap_accuracies(fn, x_adv, x_adv, y, 16)
  assert accuracy_swap == accuracy_adv < 1.0
  np.testing.assert_allclose(x_swap, x_adv, atol=1e-4)
  _, _, x_clean_swap = swap_accuracies(fn, x_adv, x, y, 16)
  assert np.abs(x_clean_swap - x_adv).max() > 1e-2  # The clean Σ does change the image.
