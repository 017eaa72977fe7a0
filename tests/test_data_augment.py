"""Tests of siriib_jax.data.augment: uint8 → float and the random crop and flip."""

import jax
import jax.numpy as jnp
import numpy as np

from siriib_jax import data


def test_to_float():
  images = jnp.array([[0, 51, 255]], jnp.uint8)
  np.testing.assert_allclose(data.to_float(images), [[0.0, 0.2, 1.0]])
  assert data.to_float(jnp.ones((2,), jnp.float16)).dtype == jnp.float32


def test_augment_is_a_random_crop_and_flip_per_example():
  images = np.random.default_rng(0).integers(1, 256, (64, 8, 8, 3), dtype=np.uint8)
  augment = jax.jit(data.augment)
  out = augment(jax.random.key(1), images)
  assert out.shape == images.shape and out.dtype == jnp.float32
  assert 0.0 <= out.min() and out.max() <= 1.0
  np.testing.assert_array_equal(out, augment(jax.random.key(1), images))
  assert not np.array_equal(out, augment(jax.random.key(2), images))
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  out = np.rint(np.asarray(out) * 255).astype(np.uint8)
  found = set()
  for i in range(64):
    matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
               if np.array_equal(out[i], (lambda c: c[:, ::-1] if flip else c)(
                   padded[i, dy:dy + 8, dx:dx + 8]))]
    assert matches, f"example {i} is not a flipped or unflipped crop of its padded image"
    found.update(matches)
  assert len({(dy, dx) for dy, dx, _ in found}) > 10  # Offsets vary per example ...
  assert {flip for _, _, flip in found} == {False, True}  # ... and so do flips.
