"""`models.conv.conv_general_dilated`: the same function and gradients as
`lax.conv_general_dilated`, with gradients XLA's CPU backend runs fast."""

import chex
import jax
import jax.numpy as jnp
import pytest
from jax import lax

from siriib_jax import xla_cpu
from siriib_jax.models import conv
from siriib_jax.models.conv import conv_general_dilated

_NHWC = ("NHWC", "HWIO", "NHWC")

CASES = [  # (input size, kernel size, stride, padding)
    (8, 3, 1, ((1, 1), (1, 1))),
    (8, 3, 2, ((1, 1), (1, 1))),
    (9, 3, 2, ((1, 1), (1, 1))),
    (8, 1, 2, ((0, 0), (0, 0))),
    (8, 4, 2, ((1, 1), (1, 1))),
    (7, 3, 1, "VALID"),
    (10, 5, 3, ((2, 0), (1, 2))),
    # ∂L/∂y at least `conv.PHASE_MIN_SIDE` on each side: strided input gradients by phases.
    (16, 3, 2, ((1, 1), (1, 1))),
    (17, 3, 2, ((1, 1), (1, 1))),
    (17, 4, 2, ((2, 1), (0, 1))),
    (16, 1, 2, ((0, 0), (0, 0))),
    (26, 5, 3, ((2, 0), (1, 2))),
]


# The kernel gradient is XLA's own with the Eigen option (as the tests and main.py run) and
# the per-tap matmul form without it: both are checked.
XLA_FLAGS = {"eigen": xla_cpu.FLAG, "ynnpack": ""}


@pytest.mark.parametrize("flags", XLA_FLAGS)
@pytest.mark.parametrize("size, k, stride, padding", CASES)
def test_values_and_both_gradients_match_lax(size, k, stride, padding, flags, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", XLA_FLAGS[flags])
  x = jax.random.uniform(jax.random.key(0), (2, size, size + 1, 5))
  w = jax.random.normal(jax.random.key(1), (k, k, 5, 7)) / k

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (stride, stride), padding,
                                             dimension_numbers=_NHWC)))

  ours, reference = loss(conv_general_dilated), loss(lax.conv_general_dilated)
  chex.assert_trees_all_close(ours(x, w), reference(x, w), rtol=1e-6)
  chex.assert_trees_all_close(jax.grad(ours, argnums=(0, 1))(x, w),
                              jax.grad(reference, argnums=(0, 1))(x, w), atol=1e-5)


@pytest.mark.parametrize("size, k, stride, padding",
                         [case for case in CASES if case[2] > 1 and case[1] >= case[2]])
def test_every_strided_input_gradient_by_phases_matches_lax(size, k, stride, padding,
                                                            monkeypatch):
  """The phases (`conv._phase_taps`) on maps of any size, odd sizes and asymmetric
  padding included."""
  monkeypatch.setattr(conv, "PHASE_MIN_SIDE", 1)
  x = jax.random.uniform(jax.random.key(0), (2, size, size + 1, 5))
  w = jax.random.normal(jax.random.key(1), (k, k, 5, 7)) / k
  loss = lambda fn: lambda x: jnp.sum(jnp.sin(fn(x, w, (stride, stride), padding,
                                                 dimension_numbers=_NHWC)))
  chex.assert_trees_all_close(jax.grad(loss(conv_general_dilated))(x),
                              jax.grad(loss(lax.conv_general_dilated))(x), atol=1e-5)


@pytest.mark.parametrize("flags", XLA_FLAGS)
@pytest.mark.parametrize("stride", [1, 2])
def test_input_gradient_is_a_plain_forward_convolution(stride, flags, monkeypatch):
  """The input gradient is an NHWC/HWIO convolution with an explicitly flipped and
  transposed kernel (JAX's own rule swaps the kernel's feature dimensions in the dimension
  numbers instead): the form XLA's CPU backend runs as fast inside a rolled loop as
  outside it, whichever kernel gradient the option selects. With stride 2 on a 16 × 16 map
  it runs by phases: no convolution over the stride-dilated ∂L/∂y (`lhs_dilation`), whose
  zeros are 3/4 of its work."""
  monkeypatch.setenv("XLA_FLAGS", XLA_FLAGS[flags])
  x = jnp.ones((2, 16, 16, 5))
  w = jnp.ones((3, 3, 5, 7))
  grad = jax.grad(lambda x: jnp.sum(conv_general_dilated(
      x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=_NHWC)))
  equations = jax.make_jaxpr(grad)(x).jaxpr.eqns

  def primitives(eqns):
    for eqn in eqns:
      yield eqn
      for sub in jax.core.jaxprs_in_params(eqn.params):
        yield from primitives(sub.eqns)

  found = list(primitives(equations))
  # The convolution whose result has x's size is the input gradient (x's shape, or the
  # stride² phases of x at the output's resolution; the forward pass gives 7 channels, a
  # kernel gradient, traced in the backward pass and unused here, w's size).
  input_gradients = [eqn for eqn in found if eqn.primitive.name == "conv_general_dilated"
                     and eqn.outvars[0].aval.size == x.size]
  assert len(input_gradients) == 1
  (input_gradient,) = input_gradients
  out = input_gradient.outvars[0].aval.shape
  assert out == (2, 16 // stride, 16 // stride, 5 * stride**2)
  expected = lax.conv_dimension_numbers(input_gradient.invars[0].aval.shape, w.shape, _NHWC)
  assert input_gradient.params["dimension_numbers"] == expected
  assert input_gradient.params["lhs_dilation"] == (1, 1)


def test_kernel_gradient_follows_the_backend_and_the_xla_option(monkeypatch):
  """On the CPU: the per-tap matmul kernel gradient without the Eigen option (YNNPACK's own
  is ~13× slower), XLA's own with it; off the CPU, `lax.conv_general_dilated` itself, whose
  gradients (cuDNN's on a GPU) are faster there."""
  x = jnp.ones((2, 8, 8, 5))
  w = jnp.ones((3, 3, 5, 7))
  loss = lambda x, w: jnp.sum(conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                   dimension_numbers=_NHWC))
  count = lambda: str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w)).count("dot_general")
  monkeypatch.setenv("XLA_FLAGS", "")
  assert count() == 9  # One (B·H·W, C_in)ᵀ × (B·H·W, C_out) product per kernel tap.
  monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {xla_cpu.FLAG}")
  assert count() == 0
  monkeypatch.setenv("XLA_FLAGS", "")
  for backend in ("gpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
    assert count() == 0
