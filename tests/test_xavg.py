"""analysis/xavg: x_avg of a SiRIIB model in batches, the viewing normalisation of App. C.5
and the rows of Fig. 4, 9, 10, 11."""

import jax
import numpy as np
import pytest

from siriib_jax.analysis.xavg import (NoSiRIIBError, adaptive_examples, adversarial_rows,
                                      attack_comparison_rows, view_difference, x_avg,
                                      x_avg_rows)
from tests.helpers import tiny_model


def _images(n, seed=0, size=4):
  return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype(np.float32)


def test_x_avg_is_the_models_in_any_batching():
  model, variables = tiny_model(siriib=True)
  x = _images(5, size=16)
  reference = np.asarray(model.apply(variables, x).x_avg)
  batched = x_avg(model, variables, x, batch_size=2)  # 3 batches, the last one padded.
  assert batched.shape == x.shape and batched.dtype == np.float32
  np.testing.assert_allclose(batched, reference, atol=1e-5)
  assert 0.0 < batched.min() and batched.max() < 1.0


def test_a_model_without_siriib_has_no_x_avg():
  model, variables = tiny_model(siriib=False)
  with pytest.raises(NoSiRIIBError, match="no SiRIIB"):
    x_avg(model, variables, _images(2, size=16))
  assert issubclass(NoSiRIIBError, ValueError)
  with pytest.raises(NoSiRIIBError):  # Refused before any attack compiles.
    adaptive_examples(model, variables, _images(2, size=16), np.zeros(2, np.int32),
                      jax.random.key(0), eps=8 / 255, step_size=2 / 255, steps=1)


def test_view_difference_maps_each_image_affinely_onto_the_unit_interval():
  a, b = _images(3, 1), _images(3, 2)
  b[2] = a[2] + 0.1  # A constant difference: mid-grey.
  view = view_difference(a, b)
  assert view.shape == a.shape and view.dtype == np.float32
  for i in range(2):
    d = a[i] - b[i]
    assert view[i].min() == 0.0 and np.isclose(view[i].max(), 1.0)
    # One increasing affine map per image, shared by the three channels.
    np.testing.assert_allclose(view[i] * (d.max() - d.min()) + d.min(), d, atol=1e-6)
  np.testing.assert_allclose(view[2], 0.5)
  # Each image on its own scale: scaling one image's difference leaves its view alone.
  c = b.copy()
  c[0] = a[0] - 10 * (a[0] - b[0])
  np.testing.assert_allclose(view_difference(a, c)[0], view[0], atol=1e-6)
  with pytest.raises(ValueError, match="shape"):
    view_difference(a, b[:2])


def test_figure_9_rows():
  x, x_adv, x_avg_adv = _images(2, 1), _images(2, 2), _images(2, 3)
  rows = adversarial_rows(x, x_adv, x_avg_adv, attack="PGD-20")
  assert [r.label for r in rows] == ["x", "x_adv (PGD-20)", "x_avg(x_adv) (PGD-20)",
                                     "x − x_adv (PGD-20)", "x_avg − x_adv (PGD-20)"]
  np.testing.assert_array_equal(rows[1].images, x_adv)
  np.testing.assert_array_equal(rows[2].images, x_avg_adv)
  np.testing.assert_array_equal(rows[3].images, view_difference(x, x_adv))
  np.testing.assert_array_equal(rows[4].images, view_difference(x_avg_adv, x_adv))
  with pytest.raises(ValueError, match="same test images"):
    adversarial_rows(x, x_adv[:1], x_avg_adv)


def test_figure_10_and_4_rows():
  x = _images(2, 1)
  attacks = {"PGD-20": (_images(2, 2), _images(2, 3)), "C&W-100": (_images(2, 4), _images(2, 5))}
  rows = attack_comparison_rows(x, attacks)
  assert [r.label for r in rows] == [
      "x", "x_adv (PGD-20)", "x_avg(x_adv) (PGD-20)", "x_adv − x_avg (PGD-20)",
      "x_adv (C&W-100)", "x_avg(x_adv) (C&W-100)", "x_adv − x_avg (C&W-100)"]
  # Fig. 10's difference is x_adv − x_avg: the negative of Fig. 9's x_avg − x_adv picture.
  np.testing.assert_allclose(rows[6].images, 1 - view_difference(*attacks["C&W-100"][::-1]),
                             atol=1e-6)
  runs = x_avg_rows(x, {"λ1 = 1": _images(2, 6), "λ1 = 20": _images(2, 7)})
  assert [r.label for r in runs] == ["x", "λ1 = 1", "λ1 = 20"]
  np.testing.assert_array_equal(runs[2].images, _images(2, 7))
  with pytest.raises(ValueError):
    x_avg_rows(x, {})
  with pytest.raises(ValueError):
    attack_comparison_rows(x, {})


@pytest.mark.slow  # Compiles adaptive PGD through SiRIIB's SVD loss: minutes on a busy CPU.
def test_adaptive_examples_stay_in_the_ball_and_move():
  model, variables = tiny_model(siriib=True)
  x = _images(2, 8, size=16)
  y = np.asarray(model.apply(variables, x).logits).argmax(axis=1)
  eps = 8 / 255
  out = adaptive_examples(model, variables, x, y, jax.random.key(0), eps=eps,
                          step_size=2 / 255, steps=1, losses=("ce", "svd+info"))
  assert list(out) == ["L_CE", "L_svd + L_info"]
  for x_adv in out.values():
    assert x_adv.shape == x.shape
    assert np.abs(x_adv - x).max() <= eps + 1e-6 and 0.0 <= x_adv.min() and x_adv.max() <= 1
    assert np.abs(x_adv - x).max() > eps / 2
  assert not np.allclose(out["L_CE"], out["L_svd + L_info"])
