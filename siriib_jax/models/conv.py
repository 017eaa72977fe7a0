"""A drop-in `lax.conv_general_dilated` whose gradients run fast on XLA's CPU backend.

Kernel gradient. XLA:CPU's default (YNNPACK) computes the kernel gradient ("backprop
filter") as a convolution whose window is the whole feature map, many times slower than the
forward pass on large maps. Written as `Σ_{kh, kw} patch(kh, kw)ᵀ · ∂y` — one
(B·H'·W', C_in)ᵀ × (B·H'·W', C_out) product per kernel tap — it costs about a forward pass.
With `xla_cpu.use_eigen_convolutions` (as `main.py` runs), XLA's own kernel gradient is the
faster one, so the backward pass takes it when `XLA_FLAGS` sets that option
(`xla_cpu.eigen_convolutions_enabled`, read when the step is traced) and the per-tap form
otherwise.

Input gradient. Written out as a plain NHWC/HWIO convolution of the (stride-dilated) output
gradient with the kernel flipped in space and transposed in its channels: the convolution
JAX's transpose rule describes, without the `rev` and transposed dimension numbers that
XLA's CPU backend runs many times slower inside a rolled `lax.fori_loop`/`while` (APGD and
FAB keep their 100+ steps rolled). A strided convolution's, on maps of at least
`PHASE_MIN_SIDE`, by phases instead: one convolution of the undilated output gradient
yields the s_h · s_w interleaved phases of ∂L/∂x, without the zeros of the dilation.

`conv_general_dilated` takes this path when JAX's default backend is the CPU, for NHWC/HWIO
convolutions without dilation or feature groups and with explicit non-negative or VALID
padding (every convolution of the package's models); anything else — and every convolution
on GPU and TPU, where XLA's own (cuDNN's) gradients are the better ones — goes to
`lax.conv_general_dilated` unchanged. The forward pass is XLA's own, so values are
identical and gradients equal up to the order of floating-point summation. Pass it to
`flax.linen.Conv(conv_general_dilated=…)`. Measurements behind these choices:
BENCHMARKS.md §4.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from siriib_jax import xla_cpu

_NHWC = ("NHWC", "HWIO", "NHWC")
# A strided convolution's input gradient runs by phases where ∂L/∂y is at least this many
# pixels on each side (`_by_phases`).
PHASE_MIN_SIDE = 8


def _lax_conv(x, w, strides, padding, precision):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_nhwc(x, w, strides, padding, precision, kernel_gradient):
  del kernel_gradient  # Used by the backward pass only.
  return _lax_conv(x, w, strides, padding, precision)


def _conv_nhwc_fwd(x, w, strides, padding, precision, kernel_gradient):
  del kernel_gradient
  return _lax_conv(x, w, strides, padding, precision), (x, w)


def _input_gradient(g, w, in_hw, strides, padding, precision):
  """∂L/∂x (B, H, W, C_in) of `_lax_conv` from g = ∂L/∂y (B, H', W', C_out).

  The stride-dilated g convolved (stride 1) with w flipped in space, C_in ↔ C_out; or, for
  a strided convolution whose kernel covers every phase (k ≥ s) and whose g is at least
  `PHASE_MIN_SIDE` on each side, by phases (`_phase_taps`): one stride-1 convolution of g
  whose output holds, for each of the s_h · s_w phases (a, b), the pixels
  x[s_h·m + a, s_w·n + b], then interleaved — the same sums without the dilation's zeros
  (which make s_h · s_w times the work).
  """
  if not _by_phases(w.shape[:2], strides, g.shape[1:3]):
    kernel = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
    dilated_padding = []
    for size, k, s, (lo, _), out in zip(in_hw, w.shape[:2], strides, padding, g.shape[1:3]):
      before = k - 1 - lo
      dilated_padding.append((before, size + k - 1 - ((out - 1) * s + 1) - before))
    return lax.conv_general_dilated(g, kernel, (1, 1), dilated_padding, lhs_dilation=strides,
                                    dimension_numbers=_NHWC, precision=precision)
  kh, kw, c_in, c_out = w.shape
  (rows, row_pad, row_taps), (cols, col_pad, col_taps) = (
      _phase_taps(*axis) for axis in zip(in_hw, (kh, kw), strides, padding, g.shape[1:3]))
  zero = jnp.zeros((c_out, c_in), w.dtype)
  # kernel[t_h, t_w, :, (a, b, c)] = w[i, j, c, :] for the tap (i, j) phase (a, b) reads at
  # offset (t_h, t_w), else 0.
  kernel = jnp.stack([
      jnp.stack([
          jnp.concatenate([w[row_taps[t_h][a], col_taps[t_w][b]].T
                           if row_taps[t_h][a] >= 0 and col_taps[t_w][b] >= 0 else zero
                           for a in range(strides[0]) for b in range(strides[1])], axis=1)
          for t_w in range(len(col_taps))])
      for t_h in range(len(row_taps))])
  phases = lax.conv_general_dilated(lax.pad(g, jnp.zeros((), g.dtype),
                                            ((0, 0, 0), row_pad + (0,), col_pad + (0,),
                                             (0, 0, 0))),
                                    kernel, (1, 1), "VALID", dimension_numbers=_NHWC,
                                    precision=precision)
  batch = g.shape[0]
  x_grad = phases.reshape(batch, rows, cols, strides[0], strides[1], c_in)
  x_grad = x_grad.transpose(0, 1, 3, 2, 4, 5).reshape(batch, rows * strides[0],
                                                      cols * strides[1], c_in)
  return x_grad[:, :in_hw[0], :in_hw[1]]


def _by_phases(kernel_hw, strides, out_hw) -> bool:
  """Whether `_input_gradient` takes the phases (measurements: BENCHMARKS.md §4)."""
  return (any(s > 1 for s in strides) and all(k >= s for k, s in zip(kernel_hw, strides))
          and min(out_hw) >= PHASE_MIN_SIDE)


def _phase_taps(size: int, k: int, stride: int, padding, out: int):
  """Along one axis: x[s·m + a] receives Σ_i g[m + d] · w[i] over the taps i with
  a + lo − i = s·d. Returns the phases' length ⌈size / s⌉, the (low, high) padding of g
  that makes offset t = d − min d read g[m + d] for every phase's m, and taps[t][a]: the
  tap i at offset t for phase a (−1: none)."""
  lo = padding[0]
  offsets = {(a, i): (a + lo - i) // stride for a in range(stride) for i in range(k)
             if (a + lo - i) % stride == 0}
  first, last = min(offsets.values()), max(offsets.values())
  taps = [[-1] * stride for _ in range(last - first + 1)]
  for (a, i), d in offsets.items():
    taps[d - first][a] = i
  length = -(-size // stride)
  return length, (-first, length - out + last), taps


def _kernel_gradient_taps(x, w, g, strides, padding, precision):
  """∂L/∂w (kh, kw, C_in, C_out) as Σ over output positions of patch(kh, kw)ᵀ · g: one
  (B·H'·W', C_in)ᵀ × (B·H'·W', C_out) product per kernel tap."""
  batch, _, _, c_in = x.shape
  kh, kw, _, c_out = w.shape
  out_h, out_w = g.shape[1:3]
  padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  g_flat = g.reshape(-1, c_out)
  taps = []
  for i in range(kh):
    for j in range(kw):
      patch = lax.slice(padded, (0, i, j, 0),
                        (batch, i + (out_h - 1) * strides[0] + 1,
                         j + (out_w - 1) * strides[1] + 1, c_in),
                        (1, strides[0], strides[1], 1))
      taps.append(lax.dot_general(patch.reshape(-1, c_in), g_flat, (((0,), (0,)), ((), ())),
                                  precision=precision, preferred_element_type=jnp.float32))
  return jnp.stack(taps).reshape(kh, kw, c_in, c_out).astype(w.dtype)


def _conv_nhwc_bwd(strides, padding, precision, kernel_gradient, residuals, g):
  x, w = residuals
  dx = _input_gradient(g, w, x.shape[1:3], strides, padding, precision).astype(x.dtype)
  if kernel_gradient == "xla":
    _, kernel_vjp = jax.vjp(lambda w: _lax_conv(x, w, strides, padding, precision), w)
    (dw,) = kernel_vjp(g)
  else:
    dw = _kernel_gradient_taps(x, w, g, strides, padding, precision)
  return dx, dw


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """`lax.conv_general_dilated` with the gradients above where they apply (on the CPU
  backend; see the module docstring); same arguments and result."""
  fallback = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision, **kwargs)
  if jax.default_backend() != "cpu":
    return fallback()
  if isinstance(padding, str) and padding.upper() == "VALID":
    padding = ((0, 0), (0, 0))
  if (kwargs or lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1
      or isinstance(padding, str)
      or any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ()))
      or any(p < 0 for pair in padding for p in pair)):
    return fallback()
  if dimension_numbers is not None:
    expected = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != expected:
      return fallback()
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  kernel_gradient = "xla" if xla_cpu.eigen_convolutions_enabled() else "taps"
  return _conv_nhwc(lhs, rhs, tuple(int(s) for s in window_strides), padding, precision,
                    kernel_gradient)
