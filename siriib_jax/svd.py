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
"""

import functools

import jax
import jax.numpy as jnp


def _svd(x):
  u, s, vt = jnp.linalg.svd(x, full_matrices=False)
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
  sigma_clean = jnp.linalg.svd(jnp.moveaxis(x_clean.astype(jnp.float32), -1, 1),
                               compute_uv=False)
  swapped = (u * sigma_clean[..., None, :]) @ jnp.swapaxes(v, -1, -2)
  return jnp.moveaxis(swapped, 1, -1)
