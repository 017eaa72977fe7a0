"""SiRIIB losses (SPEC §3) and the strategies' per-example losses."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siriib_jax import losses
from siriib_jax.models import create_model
from siriib_jax.svd import svd_parts, swap_singular_values

SIZE = 8


def _degenerate_images():
  ramp = jnp.linspace(0.0, 1.0, SIZE)
  rank1 = jnp.outer(ramp, ramp)[None, :, :, None].repeat(3, axis=-1)
  identity = jnp.eye(SIZE)[None, :, :, None].repeat(3, axis=-1)  # All σ equal to 1.
  return {
      "all_zero": jnp.zeros((1, SIZE, SIZE, 3)),
      "constant": jnp.full((1, SIZE, SIZE, 3), 0.5),
      "rank_1": rank1,
      "repeated_singular_values": identity,
  }


@pytest.mark.parametrize("name", sorted(_degenerate_images()))
def test_svd_loss_and_its_gradient_are_finite_on_degenerate_images(name):
  image = _degenerate_images()[name]
  clean = jax.random.uniform(jax.random.key(0), image.shape)
  for x_avg, x_clean in [(image, clean), (clean, image), (image, image)]:
    value, grad = jax.value_and_grad(lambda a, c=x_clean: jnp.sum(losses.svd_loss(a, c)))(x_avg)
    assert np.isfinite(float(value))
    assert bool(jnp.all(jnp.isfinite(grad)))
  # The control: the naive route (autodiff through jnp.linalg.svd's U and V) is unusable
  # here, which is what the custom gradient is for. What LAPACK returns for a degenerate
  # input differs between processors (NaN/Inf on one, entries near 1e10 on another), so the
  # control accepts either: non-finite, or orders of magnitude above the project's gradient.
  def naive(a):
    u, _, vt = jnp.linalg.svd(jnp.moveaxis(a, -1, 1))
    return jnp.sum((u @ vt - jnp.moveaxis(clean, -1, 1)) ** 2)
  naive_grad = np.asarray(jax.grad(naive)(image))
  ours = np.asarray(jax.grad(lambda a: jnp.sum(losses.svd_loss(a, clean)))(image))
  assert (not np.all(np.isfinite(naive_grad))
          or np.abs(naive_grad).max() > 1e4 * max(np.abs(ours).max(), 1e-6))


def test_custom_gradient_matches_autodiff_on_generic_images():
  x = jax.random.uniform(jax.random.key(1), (3, SIZE, SIZE, 3))
  weights = jax.random.normal(jax.random.key(2), (3, 3, SIZE, SIZE))

  def ours(a):
    sigma, uv = svd_parts(a)
    return jnp.sum(uv * weights) + jnp.sum(jnp.sin(sigma))

  def reference(a):
    u, sigma, vt = jnp.linalg.svd(jnp.moveaxis(a, -1, 1))
    return jnp.sum((u @ vt) * weights) + jnp.sum(jnp.sin(sigma))

  np.testing.assert_allclose(ours(x), reference(x), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(reference)(x), rtol=2e-2, atol=2e-3)


def test_svd_parts_reconstruct_polar_factor():
  x = jax.random.uniform(jax.random.key(3), (2, SIZE, SIZE, 3))
  sigma, uv = svd_parts(x)
  chex.assert_shape(sigma, (2, 3, SIZE))
  chex.assert_shape(uv, (2, 3, SIZE, SIZE))
  eye = jnp.eye(SIZE)
  np.testing.assert_allclose(uv @ jnp.swapaxes(uv, -1, -2), jnp.broadcast_to(eye, uv.shape),
                             atol=1e-4)


def test_svd_loss_is_zero_iff_x_avg_equals_the_clean_image():
  x = jax.random.uniform(jax.random.key(4), (4, SIZE, SIZE, 3))
  np.testing.assert_allclose(losses.svd_loss(x, x), 0.0, atol=1e-10)
  other = jnp.clip(x + 0.05 * jax.random.normal(jax.random.key(5), x.shape), 0, 1)
  assert bool(jnp.all(losses.svd_loss(other, x) > 1e-5))


def test_swapping_singular_values_of_the_same_image_is_the_identity():
  x = jax.random.uniform(jax.random.key(6), (2, SIZE, SIZE, 3))
  np.testing.assert_allclose(swap_singular_values(x, x), x, atol=1e-5)
  x_adv = jnp.clip(x + 0.03 * jnp.sign(jax.random.normal(jax.random.key(7), x.shape)), 0, 1)
  swapped = swap_singular_values(x_adv, x)
  sigma_swapped, _ = svd_parts(swapped)
  sigma_clean, _ = svd_parts(x)
  np.testing.assert_allclose(sigma_swapped, sigma_clean, atol=1e-4)
  assert not np.allclose(swapped, x_adv, atol=1e-3)


def test_siriib_losses_vanish_when_the_adversarial_input_is_the_clean_one(config):
  config.model.siriib.scales = (16, 8)
  model = create_model(config.model, 16)
  x = jax.random.uniform(jax.random.key(8), (2, 16, 16, 3))
  variables = jax.jit(model.init)(jax.random.key(9), x)  # Jitted: op by op takes ~50 s.
  out = jax.jit(model.apply)(variables, x)
  terms = losses.siriib_terms(variables["params"], out.x_avg, out.x_avg, out.features,
                              out.features)
  np.testing.assert_allclose(terms.svd, 0.0, atol=1e-10)
  np.testing.assert_allclose(terms.info, 0.0, atol=1e-12)
  # Through both sides: L_info from a perturbed input is positive and has a gradient on p_i.
  x_adv = jnp.clip(x + 8 / 255 * jnp.sign(jax.random.normal(jax.random.key(10), x.shape)), 0, 1)

  def info(params):
    adv = model.apply({**variables, "params": params}, x_adv)
    clean = model.apply({**variables, "params": params}, x)
    return jnp.mean(losses.info_loss(adv.features, clean.features))

  value, grads = jax.jit(jax.value_and_grad(info))(variables["params"])
  assert float(value) > 0
  assert float(jnp.abs(grads["siriib"]["projection0"]["kernel"]).max()) > 0


def test_siriib_objective_combines_the_terms_with_lambdas():
  terms = losses.SiriibTerms(svd=jnp.array([1.0, 3.0]), info=jnp.array([0.5, 0.5]),
                             orth=jnp.array(2.0))
  value = losses.siriib_objective(jnp.array([1.0, 2.0]), terms, lambda1=20.0, lambda2=1e-4)
  np.testing.assert_allclose(value, 1.5 + 20.0 * 2.5 + 1e-4 * 2.0, rtol=1e-6)


def test_trades_kl_is_nonnegative_and_zero_only_for_equal_predictions():
  logits = jax.random.normal(jax.random.key(11), (5, 10))
  np.testing.assert_allclose(losses.trades_kl(logits, logits), 0.0, atol=1e-6)
  other = logits + jax.random.normal(jax.random.key(12), logits.shape)
  kl = losses.trades_kl(other, logits)
  assert kl.shape == (5,) and bool(jnp.all(kl > 0))
  # KL(p_clean ‖ p_adv) computed directly.
  p, q = jax.nn.softmax(logits), jax.nn.softmax(other)
  np.testing.assert_allclose(kl, jnp.sum(p * jnp.log(p / q), axis=-1), rtol=1e-4)


def test_cross_entropy_is_per_example():
  logits = jnp.array([[10.0, 0.0], [0.0, 10.0]])
  ce = losses.cross_entropy(logits, jnp.array([0, 0]))
  assert ce.shape == (2,) and float(ce[0]) < 1e-3 and float(ce[1]) > 9.0


def test_feature_spread_is_zero_for_input_independent_features_only():
  rng = np.random.default_rng(0)
  bias = rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
  constant = [jnp.broadcast_to(bias, (5, 4, 4, 3)), jnp.full((5, 2, 2, 6), 0.3)]
  assert float(losses.feature_spread(constant)) < 1e-7  # Rounding of the batch mean.
  varying = [jnp.asarray(rng.normal(size=(5, 4, 4, 3)), jnp.float32), constant[1]]
  expected = (np.mean(np.std(np.asarray(varying[0]), axis=0)) + 0.0) / 2
  np.testing.assert_allclose(losses.feature_spread(varying), expected, rtol=1e-5)
