"""Per-image, per-channel SVD pieces with gradients that stay finite on degenerate images.

`L_svd` (paper §4.2) compares singular values Σ and the orthogonal factor `U Vᵀ` of each
colour channel's H×W matrix. `jnp.linalg.svd`'s gradient through U and V divides by
`σ_i² − σ_j²` and is NaN or inf for constant, all-zero, rank-1 images and for repeated
singular values. `U Vᵀ` itself — the orthogonal polar factor — needs no individual
singular vectors: its differential is

    d(U Vᵀ) = U [(M − Mᵀ) ⊘ (σ_i + σ_j)] Vᵀ,    M = Uᵀ dX V,

which only degenerates where σ_i + σ_j → 0 (rank deficiency, where `U Vᵀ` is not unique).
`svd_parts` uses this with `1 / (σ_i + σ_j)` regularised to `s / (s² + eps)`, bounded by
`1 / (2√eps)`, so every gradient is finite; away from rank deficiency it is exact.

**One matrix per LAPACK call on the CPU.** Every SVD here goes through `_lapack_svd`. On the
CPU backend it decomposes a batch one matrix at a time in a loop (`lax.map`), so each
LAPACK call is unbatched; on GPU and TPU it is one batched `jnp.linalg.svd`. The values
are the same. The reason: jaxlib 0.10's batched CPU SVD splits its batch over XLA:CPU's
intra-op thread pool (`ParallelBatchMap`) and blocks the pool thread that runs it until
the parts are done. When XLA runs as many batched SVDs at once as the pool has threads —
two on a 2-core host (`L_svd`'s SVDs of x_avg and x), or one per forced CPU device — every
thread can end up waiting for parts that no thread is left to run, and the program hangs
with idle CPUs (jax-ml/jax#39292 reports another failure of that batched dispatch).
Unbatched calls have not hung in any run on 2 cores (four at once: 300 runs of 300).

The loop costs time on the CPU (BENCHMARKS.md, "SVD on the CPU"). A batch split over
devices by explicit sharding is looped over on each device's part; under automatic (GSPMD)
sharding XLA may run the whole loop on every device. Under `jax.vmap` the loop's body is
batched again: call these functions on the whole batch instead.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _batched_svd(x: jnp.ndarray, compute_uv: bool):
  out = jnp.linalg.svd(x, full_matrices=False, compute_uv=compute_uv)
  return tuple(out) if compute_uv else out


def _svd_each_local(x: jnp.ndarray, compute_uv: bool):
  if x.ndim == 2:
    return _batched_svd(x, compute_uv)
  flat = x.reshape((-1,) + x.shape[-2:])
  out = lax.map(functools.partial(_batched_svd, compute_uv=compute_uv), flat)
  return jax.tree.map(lambda o: o.reshape(x.shape[:-2] + o.shape[1:]), out)


def _svd_each(x: jnp.ndarray, compute_uv: bool):
  """`_batched_svd` of (..., m, n) with one LAPACK call per m × n matrix (module doc); a
  batch split over devices by explicit sharding is looped over on each device's part."""
  sharding = jax.typeof(x).sharding
  spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
  if sharding.mesh.empty or not any(spec[:-2]):
    return _svd_each_local(x, compute_uv)
  matrices = jax.sharding.PartitionSpec(*spec[:-2], None, None)
  if any(spec[-2:]):
    x = jax.sharding.reshard(x, matrices)
  out_specs = ((matrices, jax.sharding.PartitionSpec(*spec[:-2], None), matrices)
               if compute_uv else jax.sharding.PartitionSpec(*spec[:-2], None))
  return jax.shard_map(functools.partial(_svd_each_local, compute_uv=compute_uv),
                       mesh=sharding.mesh, in_specs=matrices, out_specs=out_specs)(x)


def _lapack_svd(x: jnp.ndarray, compute_uv: bool = True):
  """Thin SVD of (..., m, n): per matrix on the CPU, batched elsewhere (module doc)."""
  return lax.platform_dependent(x, cpu=functools.partial(_svd_each, compute_uv=compute_uv),
                                default=functools.partial(_batched_svd, compute_uv=compute_uv))


def _svd(x):
  u, s, vt = _lapack_svd(x)
  return u, s, jnp.swapaxes(vt, -1, -2)


def _inverse_pair_sums(s: jnp.ndarray, eps: float) -> jnp.ndarray:
  pair = s[..., :, None] + s[..., None, :]
  return pair / (pair * pair + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _svd_parts(x: jnp.ndarray, eps: float):
  u, s, v = _svd(x)
  return s, u @ jnp.swapaxes(v, -1, -2)


def _svd_parts_fwd(x, eps):
  u, s, v = _svd(x)
  return (s, u @ jnp.swapaxes(v, -1, -2)), (u, s, v)


def _svd_parts_bwd(eps, residuals, cotangents):
  u, s, v = residuals
  s_bar, q_bar = cotangents
  a = jnp.swapaxes(u, -1, -2) @ q_bar @ v
  inner = _inverse_pair_sums(s, eps) * (a - jnp.swapaxes(a, -1, -2))
  inner = inner + s_bar[..., :, None] * jnp.eye(s.shape[-1], dtype=s.dtype)
  return (u @ inner @ jnp.swapaxes(v, -1, -2),)


_svd_parts.defvjp(_svd_parts_fwd, _svd_parts_bwd)


# `orthonormal_rows` floors singular values at this fraction of the largest in its gradient.
_RELATIVE_SINGULAR_VALUE_FLOOR = 1e-3


@jax.custom_vjp
def _polar_factor(a):
  u, _, v = _svd(a)
  return u @ jnp.swapaxes(v, -1, -2)


def _polar_factor_fwd(a):
  u, s, v = _svd(a)
  return u @ jnp.swapaxes(v, -1, -2), (u, s, v)


def _polar_factor_bwd(residuals, w_bar):
  u, s, v = residuals
  s = jnp.maximum(s, _RELATIVE_SINGULAR_VALUE_FLOOR * s[..., :1])
  ut, vt = jnp.swapaxes(u, -1, -2), jnp.swapaxes(v, -1, -2)
  x = ut @ w_bar @ v
  rotation = (x - jnp.swapaxes(x, -1, -2)) / (s[..., :, None] + s[..., None, :])
  off_span = (ut @ w_bar) - ((ut @ w_bar) @ v) @ vt  # Uᵀ W̄ (I − V Vᵀ)
  return (u @ (rotation @ vt + off_span / s[..., :, None]),)


_polar_factor.defvjp(_polar_factor_fwd, _polar_factor_bwd)


def orthonormal_rows(a: jnp.ndarray) -> jnp.ndarray:
  """The orthogonal polar factor `W = U Vᵀ` of `A = U Σ Vᵀ` (thin SVD): the matrix with
  orthonormal rows nearest to `A` in the Frobenius norm, equal to `(A Aᵀ)^(-1/2) A`.

  It is the map of `model.siriib.orthogonality = "exact"` from the SR block's
  unconstrained parameter onto the Stiefel manifold (paper §3.2, App. B: W orthogonal).
  **[choice]** Why this map:
  - it treats the input (colour) channels alike — a QR / Gram–Schmidt map orthonormalises
    the first row first — and it is the identity on matrices that already have orthonormal
    rows, so an orthogonally initialised block computes the same function as in "penalty"
    mode; a Cayley or matrix-exponential map would need an N × N skew matrix (more numbers)
    or a 3N-number subspace of one;
  - the forward value comes from LAPACK's SVD, so W has orthonormal rows to float32
    rounding whatever A's conditioning;
  - its gradient needs no individual singular vector: for m ≤ n,

        dW = U [(M − Mᵀ) ⊘ (σ_i + σ_j)] Vᵀ + U Σ⁻¹ Uᵀ dA (I − V Vᵀ),   M = Uᵀ dA V,

    with no 1 / (σ_i² − σ_j²) term, so the repeated singular values of an orthonormal A
    (where `jnp.linalg.svd`'s own gradient is NaN) are harmless. It degenerates only where
    A loses rank (W is not unique there); in the gradient the singular values are floored
    at 1e-3 × the largest, which bounds it by ~1e3 / σ_max, and is exact elsewhere;
  - it is scale-invariant, W(cA) = W(A): the gradient is orthogonal to A and shrinks as
    1 / ‖A‖, so a growing ‖A‖ slows W's updates instead of destabilising them.

  Args:
    a: (..., m, n) with m ≤ n (the SR block's in_channels × orth_channels).
  Returns:
    (..., m, n) float32 with `W Wᵀ = I_m` up to float32 rounding.
  Raises:
    ValueError: m > n (no matrix with more rows than columns has orthonormal rows).
  """
  if a.shape[-2] > a.shape[-1]:
    raise ValueError(f"orthonormal_rows needs at most as many rows as columns, got {a.shape}")
  return _polar_factor(a.astype(jnp.float32))


def svd_parts(images: jnp.ndarray, eps: float = 1e-6) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Singular values and orthogonal factor of each channel of each image.

  Args:
    images: (B, H, W, C) with H = W (the polar factor of a square matrix).
    eps: regularisation of `1 / (σ_i + σ_j)` in the gradient (see module doc); for images
      in [0, 1] pairs below ~1e-3 are pixel noise.
  Returns:
    sigma: (B, C, H) singular values, descending; uv: (B, C, H, W) the factor `U Vᵀ`.
  """
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"svd_parts needs square images, got {images.shape[1:3]}")
  matrices = jnp.moveaxis(images.astype(jnp.float32), -1, 1)
  return _svd_parts(matrices, eps)


def swap_singular_values(x_adv: jnp.ndarray, x_clean: jnp.ndarray) -> jnp.ndarray:
  """`U_adv Σ_clean V_advᵀ` per image and channel (paper §3.1, Fig. 1–2).

  Args:
    x_adv, x_clean: (B, H, W, C).
  Returns:
    (B, H, W, C): the adversarial singular vectors with the clean singular values.
  """
  u, _, v = _svd(jnp.moveaxis(x_adv.astype(jnp.float32), -1, 1))
  sigma_clean = _lapack_svd(jnp.moveaxis(x_clean.astype(jnp.float32), -1, 1), compute_uv=False)
  swapped = (u * sigma_clean[..., None, :]) @ jnp.swapaxes(v, -1, -2)
  return jnp.moveaxis(swapped, 1, -1)
