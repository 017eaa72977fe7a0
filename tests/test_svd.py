"""`siriib_jax/svd.py`: several batches through one SVD call, and why (module doc).

The SVD pieces' gradients on degenerate images are tested in tests/test_losses.py; the
polar factor of the SR block's W in tests/test_siriib.py.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax import losses
from siriib_jax.svd import svd_parts, svd_parts_of, swap_singular_values
from tests.helpers import REPO


def test_svd_parts_of_equals_svd_parts_of_each_batch_and_its_gradient():
  a = jax.random.uniform(jax.random.key(0), (3, 8, 8, 3))
  b = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
  for (sigma, uv), images in zip(svd_parts_of(a, b), (a, b)):
    alone_sigma, alone_uv = svd_parts(images)
    np.testing.assert_allclose(sigma, alone_sigma, atol=1e-5)
    np.testing.assert_allclose(uv, alone_uv, atol=1e-5)

  def stacked(x):
    (s1, q1), (s2, q2) = svd_parts_of(x, b)
    return jnp.sum(s1 * s1[::-1]) + jnp.sum(q1 * 0.3) + jnp.sum(s2)

  def alone(x):
    s1, q1 = svd_parts(x)
    return jnp.sum(s1 * s1[::-1]) + jnp.sum(q1 * 0.3)

  np.testing.assert_allclose(jax.grad(stacked)(a), jax.grad(alone)(a), atol=1e-5)


def test_svd_parts_of_refuses_batches_of_different_image_shapes():
  with pytest.raises(ValueError, match="one image shape"):
    svd_parts_of(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 4, 4, 3)))


def test_swap_singular_values_keeps_the_adversarial_vectors_and_the_clean_values():
  x_adv = jax.random.uniform(jax.random.key(2), (2, 8, 8, 3))
  x_clean = jax.random.uniform(jax.random.key(3), (2, 8, 8, 3))
  swapped = swap_singular_values(x_adv, x_clean)
  sigma_swapped, uv_swapped = svd_parts(swapped)
  sigma_clean, _ = svd_parts(x_clean)
  _, uv_adv = svd_parts(x_adv)
  np.testing.assert_allclose(sigma_swapped, sigma_clean, atol=1e-4)
  np.testing.assert_allclose(uv_swapped, uv_adv, atol=1e-3)


_TWO_THREADS = """
import os, sys
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])  # XLA's pool: 2 threads.
sys.path.insert(0, {repo!r})
from siriib_jax.runtime import configure_process
configure_process()
import jax, jax.numpy as jnp
from siriib_jax import losses
from siriib_jax.svd import swap_singular_values
x = jax.random.uniform(jax.random.key(0), (128, 32, 32, 3))
grad = jax.jit(jax.grad(lambda a: jnp.mean(losses.svd_loss(a, x))))
swap = jax.jit(swap_singular_values)
for i in range(8):
  jax.block_until_ready(grad(x * 0.5 + 0.01 * i))
  jax.block_until_ready(swap(x * 0.5 + 0.01 * i, x))
print("OK")
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs to give XLA a 2-thread pool")
def test_svd_loss_and_the_swap_do_not_hang_a_two_thread_pool():
  """Two batched SVDs that XLA:CPU runs at once hung jax.grad(L_svd) at batch 128 on two
  cores, with idle CPUs (module doc). Both batches now go through one SVD call. A fresh
  process: the pool's size is fixed when JAX starts."""
  try:
    result = subprocess.run([sys.executable, "-c", _TWO_THREADS.format(repo=str(REPO))],
                            capture_output=True, text=True, timeout=240, cwd=REPO)
  except subprocess.TimeoutExpired:
    pytest.fail("L_svd's gradient or the singular-value swap hung on a 2-thread pool")
  assert result.returncode == 0 and "OK" in result.stdout.splitlines(), result.stderr[-3000:]


def test_svd_loss_is_unchanged_by_the_single_call():
  """The stacked call is the same arithmetic as one call per batch."""
  x_avg = jax.random.uniform(jax.random.key(4), (3, 8, 8, 3))
  x_clean = jax.random.uniform(jax.random.key(5), (3, 8, 8, 3))
  (sa, qa), (sc, qc) = (svd_parts(x_avg), svd_parts(x_clean))
  expected = (jnp.mean((sa - sc)**2, axis=(1, 2)) + jnp.mean((qa - qc)**2, axis=(1, 2, 3))
              + jnp.mean((x_avg - x_clean)**2, axis=(1, 2, 3)))
  np.testing.assert_allclose(losses.svd_loss(x_avg, x_clean), expected, rtol=1e-5)
