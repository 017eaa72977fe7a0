"""The attack interface every attack in `siriib_jax.attacks` follows.

An attack is built like an optax transformation: a factory takes the hyper-parameters and
returns an `Attack`, a pure function `(logits_fn, x, y, key) -> AttackResult` that is safe
to call inside `jax.jit` and deterministic for a PRNG `key`.
"""

from typing import Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp

# Images (B, H, W, C) in [0, 1] → logits (B, num_classes).
LogitsFn = Callable[[jnp.ndarray], jnp.ndarray]


class AttackResult(NamedTuple):
  """x_adv: (B, H, W, C) in [0, 1] and inside the ε-ball around x.
  success: (B,) bool, True where the model misclassifies x_adv (for a targeted attack:
  where it misclassifies, whichever class it reaches)."""
  x_adv: jnp.ndarray
  success: jnp.ndarray


class Attack(Protocol):

  def __call__(self, logits_fn: LogitsFn, x: jnp.ndarray, y: jnp.ndarray,
               key: jax.Array) -> AttackResult:
    ...
