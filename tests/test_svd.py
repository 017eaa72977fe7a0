"""`siriib_jax/svd.py` on the CPU: one matrix per LAPACK call, the same values as one
batched `jnp.linalg.svd`, and no hang on a 2-thread XLA pool (module doc).

The SVD pieces' gradients on degenerate images are tested in tests/test_losses.py; the
polar factor of the SR block's W in tests/test_siriib.py.
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax import losses, svd
from siriib_jax.svd import orthonormal_rows, svd_parts, swap_singular_values
from tests.helpers import REPO, run_on_forced_devices


def _batched_lapack_svd(x, compute_uv=True):
  """One batched `jnp.linalg.svd` for the whole batch: the GPU/TPU path."""
  out = jnp.linalg.svd(x, full_matrices=False, compute_uv=compute_uv)
  return tuple(out) if compute_uv else out


@pytest.fixture
def batched_svd(monkeypatch):
  """Switches svd.py to one batched SVD per call; `use()` starts it. JAX caches traces of
  the custom-VJP functions, so the caches are cleared on entry and on exit."""

  def use():
    jax.clear_caches()
    monkeypatch.setattr(svd, "_lapack_svd", _batched_lapack_svd)

  yield use
  monkeypatch.undo()
  jax.clear_caches()


def _lapack_batch_dims(fn, *args) -> list[int]:
  """`num_batch_dims` of every LAPACK SVD call in `fn`'s CPU program."""
  text = jax.jit(fn).lower(*args).as_text()
  calls = re.findall(r"custom_call @lapack_\w*ges\w*\(.*", text)
  assert calls, "no LAPACK SVD in the program"
  return [int(re.search(r'num_batch_dims = "(\d+)"', call).group(1)) for call in calls]


def _uv_loss(images):
  sigma, uv = svd_parts(images)
  return jnp.sum(jnp.sin(sigma)) + jnp.sum(jnp.cos(uv) * jnp.arange(uv.shape[-1]))


def test_every_svd_path_makes_only_unbatched_lapack_calls_on_the_cpu():
  x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
  a = jax.random.normal(jax.random.key(1), (2, 5, 3, 12))
  paths = {
      "svd_loss and its gradient": (jax.grad(lambda v: jnp.mean(losses.svd_loss(v, x))), x),
      "swap_singular_values": (swap_singular_values, x, x[::-1]),
      "orthonormal_rows of a batch": (jax.grad(lambda v: jnp.sum(orthonormal_rows(v)**3)), a),
      "orthonormal_rows of one W": (jax.grad(lambda v: jnp.sum(orthonormal_rows(v)**3)), a[0, 0]),
  }
  for name, (fn, *args) in paths.items():
    assert set(_lapack_batch_dims(fn, *args)) == {0}, name


def test_per_matrix_svd_equals_one_batched_svd():
  x = jax.random.normal(jax.random.key(2), (2, 3, 7, 5))
  for compute_uv in (True, False):
    per_matrix = jax.jit(lambda v, c=compute_uv: svd._lapack_svd(v, c))(x)
    batched = _batched_lapack_svd(x, compute_uv)
    for got, want in zip(jax.tree.leaves(per_matrix), jax.tree.leaves(batched)):
      assert got.shape == want.shape
      np.testing.assert_allclose(got, want, atol=1e-5)


def test_values_and_gradients_equal_those_of_one_batched_svd(batched_svd):
  x_avg = jax.random.uniform(jax.random.key(3), (3, 8, 8, 3))
  x_clean = jax.random.uniform(jax.random.key(4), (3, 8, 8, 3))
  a = jax.random.normal(jax.random.key(5), (4, 3, 12))

  def everything():
    return (jax.value_and_grad(lambda v: jnp.mean(losses.svd_loss(v, x_clean)))(x_avg),
            jax.value_and_grad(_uv_loss)(x_avg),
            swap_singular_values(x_avg, x_clean),
            jax.value_and_grad(lambda v: jnp.sum(jnp.sin(orthonormal_rows(v))))(a),
            jax.value_and_grad(lambda v: jnp.sum(jnp.sin(orthonormal_rows(v))))(a[0]))

  per_matrix = jax.jit(everything)()
  batched_svd()
  assert set(_lapack_batch_dims(jax.grad(_uv_loss), x_avg)) == {2}  # Really batched.
  batched = jax.jit(everything)()
  for got, want in zip(jax.tree.leaves(per_matrix), jax.tree.leaves(batched)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# Each path at the sizes the package runs it (CIFAR-10 images, batch 128; the SR block's
# 3 × 12 W), compiled once and called again: with batched LAPACK SVDs, jax.grad of L_svd
# hung here on a 2-core host with idle CPUs (module doc). A fresh process for each: the
# XLA pool's size is fixed when JAX starts, from the CPUs the process may use.
_FEW_CPUS = """
import os, sys
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:{cpus}])
if {devices} > 1:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count={devices}"
sys.path.insert(0, {repo!r})
from siriib_jax.runtime import configure_process
configure_process()
import jax, jax.numpy as jnp, numpy as np
from siriib_jax import losses
from siriib_jax import parallel
from siriib_jax.evaluation.svd_study import swap_images
from siriib_jax.svd import orthonormal_rows, svd_parts, swap_singular_values
x = jax.random.uniform(jax.random.key(0), (4, 128, 32, 32, 3))
if {devices} > 1:  # Each device's part of the batch, as the sharded train step splits it.
  from jax.sharding import NamedSharding, PartitionSpec
  x = jax.device_put(x, NamedSharding(parallel.data_mesh(),
                                      PartitionSpec(None, parallel.DATA_AXIS)))
path = {path!r}
if path == "svd_loss":  # Four L_svd gradients (eight SVDs) in one program.
  grad = jax.jit(jax.grad(lambda a: sum(jnp.mean(losses.svd_loss(a[k], x[k])) for k in range(4))))
  run = lambda i: grad(x * 0.5 + 0.01 * i)
elif path == "swap":
  swap = jax.jit(lambda a: [swap_singular_values(a[k], x[k]) for k in range(4)])
  run = lambda i: (swap(x * 0.5 + 0.01 * i),
                   swap_images(np.asarray(x[0]) * 0.5, np.asarray(x[1]), 128))
elif path == "polar":
  w = jax.random.normal(jax.random.key(1), (4, 3, 12))
  loss = lambda a: sum(jnp.sum(jnp.sin(orthonormal_rows(a[k]))) for k in range(4))
  many = jax.random.normal(jax.random.key(2), (2, 384, 32, 32))
  loss_many = lambda a: jnp.sum(jnp.sin(orthonormal_rows(a[0]))) + jnp.sum(orthonormal_rows(a[1]))
  polar = jax.jit(lambda a, b: (jax.value_and_grad(loss)(a), jax.value_and_grad(loss_many)(b)))
  run = lambda i: polar(w + 0.01 * i, many + 0.01 * i)
for i in range(3):
  jax.block_until_ready(run(i))
print("OK")
"""


def _run_on_cpus(path: str, cpus: int = 2, devices: int = 1, timeout: int = 120):
  script = _FEW_CPUS.format(repo=str(REPO), path=path, cpus=cpus, devices=devices)
  try:
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO)
  except subprocess.TimeoutExpired:
    pytest.fail(f"{path} did not finish in {timeout} s on {cpus} CPUs ({devices} devices): "
                "hung")
  assert result.returncode == 0 and "OK" in result.stdout.splitlines(), result.stderr[-3000:]


_NEEDS_TWO_CPUS = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs two CPUs to give XLA a 2-thread pool")


@_NEEDS_TWO_CPUS
@pytest.mark.parametrize("path", ["svd_loss", "swap", "polar"])
def test_svd_paths_finish_on_two_cpus(path):
  _run_on_cpus(path)


@_NEEDS_TWO_CPUS
@pytest.mark.parametrize("path", ["svd_loss", "swap"])
def test_svd_paths_finish_on_two_cpus_with_eight_devices(path):
  _run_on_cpus(path, devices=8, timeout=240)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_l_svd_gradient_finishes_on_one_cpu():
  _run_on_cpus("svd_loss", cpus=1, timeout=180)


def test_a_batch_split_by_explicit_sharding_is_decomposed_on_each_device():
  run_on_forced_devices("""
import jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from siriib_jax import losses, svd
mesh = jax.make_mesh((4,), ("b",), axis_types=(AxisType.Explicit,))
x = jax.random.uniform(jax.random.key(0), (8, 8, 8, 3))
split = jax.device_put(x, NamedSharding(mesh, PartitionSpec("b")))
with jax.set_mesh(mesh):
  u, s, vt = jax.jit(svd._lapack_svd)(jnp.moveaxis(split, -1, 1))
  grad = jax.jit(jax.grad(lambda a: jnp.mean(losses.svd_loss(a, split * 0.5))))(split)
assert s.sharding.spec[0] == "b" and grad.sharding.spec[0] == "b"
want_u, want_s, want_vt = jnp.linalg.svd(jnp.moveaxis(x, -1, 1), full_matrices=False)
np.testing.assert_allclose(s, want_s, atol=1e-5)
np.testing.assert_allclose(u * s[..., None, :] @ vt, want_u * want_s[..., None, :] @ want_vt,
                           atol=1e-5)
np.testing.assert_allclose(grad, jax.grad(lambda a: jnp.mean(losses.svd_loss(a, x * 0.5)))(x),
                           atol=1e-6)
print("OK")
""", devices=4, timeout=300)
