"""SR block invariants (paper §3.2, SPEC §1)."""

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax.losses import orthogonality_penalty
from siriib_jax.models import SRBlock, modulate_amplitude


def _channel_pixel_singular_values(images):
  """Singular values of each image's (channels × pixels) matrix, descending."""
  b, h, w, c = images.shape
  matrices = jnp.swapaxes(images.reshape(b, h * w, c), 1, 2)
  return jnp.linalg.svd(matrices, compute_uv=False)


def _orthogonal_branch(params, x):
  """y = x · W, the SR block's singular-vector branch, through the block's own layer."""
  _, state = SRBlock().apply({"params": params, "batch_stats": _stats(params)}, x,
                             train=False, capture_intermediates=True, mutable=["intermediates"])
  return state["intermediates"]["orthogonal"]["__call__"][0]


def _stats(params):
  c = params["fuse_bn"]["scale"].shape[0]
  return {"fuse_bn": {"mean": jnp.zeros(c), "var": jnp.ones(c)}}


@pytest.fixture
def sr_params():
  x = jnp.zeros((1, 8, 8, 3))
  return SRBlock().init(jax.random.key(0), x, train=False)["params"]


def test_orthonormal_rows_keep_singular_values_and_random_rows_do_not(sr_params):
  x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3))
  expected = _channel_pixel_singular_values(x)

  y = _orthogonal_branch(sr_params, x)  # The initial kernel has orthonormal rows.
  assert y.shape == (4, 8, 8, 12)
  np.testing.assert_allclose(_channel_pixel_singular_values(y)[:, :3], expected, rtol=1e-4)
  np.testing.assert_allclose(_channel_pixel_singular_values(y)[:, 3:], 0.0, atol=1e-3)

  random_kernel = jax.random.normal(jax.random.key(2), (1, 1, 3, 12))
  params = flax.core.copy(sr_params, {"orthogonal": {"kernel": random_kernel}})
  y_random = _orthogonal_branch(params, x)
  assert not np.allclose(_channel_pixel_singular_values(y_random)[:, :3], expected, rtol=0.05)


def test_orthogonality_penalty_is_zero_exactly_for_orthonormal_rows():
  selection = jnp.eye(3, 12).reshape(1, 1, 3, 12)  # Orthonormal rows, exactly representable.
  params = {"sr0": {"orthogonal": {"kernel": selection}},
            "sr1": {"orthogonal": {"kernel": -selection[..., ::-1]}}}
  assert float(orthogonality_penalty(params)) == 0.0


def test_orthogonality_penalty_is_positive_for_random_rows_and_descends_to_zero():
  kernel = 0.5 * jax.random.normal(jax.random.key(0), (1, 1, 3, 12))
  params = {"siriib": {"sr0": {"orthogonal": {"kernel": kernel}}},
            "backbone": {"conv": {"kernel": jnp.ones((3, 3, 3, 4))}}}
  start = float(orthogonality_penalty(params))
  assert start > 0.1

  grad_fn = jax.jit(jax.grad(orthogonality_penalty))
  for _ in range(300):
    grads = grad_fn(params)
    params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
  assert float(orthogonality_penalty(params)) < 1e-8
  w = params["siriib"]["sr0"]["orthogonal"]["kernel"].reshape(3, 12)
  np.testing.assert_allclose(w @ w.T, np.eye(3), atol=1e-4)
  # The penalty reads only SR kernels: the backbone conv is untouched.
  chex.assert_trees_all_equal(params["backbone"]["conv"]["kernel"], jnp.ones((3, 3, 3, 4)))


def test_identity_amplitude_modulation_is_an_fft_round_trip():
  y = jax.random.normal(jax.random.key(0), (2, 8, 6, 12))
  np.testing.assert_allclose(modulate_amplitude(y, lambda a: a), y, atol=1e-5)
  # A non-identity modulation changes the signal (the test can fail).
  assert not np.allclose(modulate_amplitude(y, lambda a: 2 * a + 1), y, atol=1e-2)


def test_identity_amplitude_conv_in_the_block_returns_the_input(sr_params):
  x = jax.random.uniform(jax.random.key(3), (2, 8, 8, 3))
  params = flax.core.copy(sr_params, {
      "amplitude": {"kernel": jnp.eye(12).reshape(1, 1, 12, 12), "bias": jnp.zeros(12)}})
  _, state = SRBlock().apply({"params": params, "batch_stats": _stats(params)}, x,
                             train=False, capture_intermediates=True, mutable=["intermediates"])
  y = state["intermediates"]["orthogonal"]["__call__"][0]
  fuse_input = jnp.concatenate([y, y], axis=-1)
  # fuse(concat[y, z]) with z == y: compare against the block's fuse conv on [y, y].
  expected = jnp.einsum("bhwc,cd->bhwd", fuse_input, params["fuse"]["kernel"][0, 0])
  fused = state["intermediates"]["fuse"]["__call__"][0]
  np.testing.assert_allclose(fused, expected, atol=1e-4)


def test_amplitude_gradient_is_finite_where_the_spectrum_vanishes():
  grad = jax.grad(lambda y: jnp.sum(modulate_amplitude(y, lambda a: 3 * a) ** 2))(
      jnp.zeros((1, 4, 4, 2)))
  assert bool(jnp.all(jnp.isfinite(grad)))
