"""Training augmentation as a pure JAX function, to run inside the jitted train step."""

import jax
import jax.numpy as jnp


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [..., H, W, C] in [0, 255] -> float32 in [0, 1]; float input is only cast."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def augment(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
  """Random crop after zero padding, and random horizontal flip, per example.

  Args:
    key: PRNG key; the same key and images give the same output.
    images: [B, H, W, C], uint8 in [0, 255] or float in [0, 1].
    padding: zero pixels added on each side before cropping back to H x W.

  Returns:
    float32 [B, H, W, C] in [0, 1].
  """
  images = to_float(images)
  batch, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  crop_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * padding + 1)
  flips = jax.random.bernoulli(flip_key, 0.5, (batch,))

  def crop_and_flip(image, offset, flip):
    crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))
    return jnp.where(flip, crop[:, ::-1], crop)

  return jax.vmap(crop_and_flip)(padded, offsets, flips)
