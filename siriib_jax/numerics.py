"""Numerical guards shared by the train step and the checkpoints."""

import jax
import jax.numpy as jnp


def all_finite(tree) -> jax.Array:
  """Whether every floating-point leaf of `tree` is finite: a scalar bool array, usable
  under `jit` (the train step's guard) and on the host (`bool(all_finite(state))`).
  Integer leaves are ignored; an empty tree is finite."""
  checks = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)
