"""Exact top-k masks with a traced k, for schedules whose counts change inside jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ranks(scores: jax.Array) -> jax.Array:
  """rank[i] = position of entry i when sorted by descending score (stable: ties by index)."""
  flat = jnp.ravel(scores)
  order = jnp.argsort(-flat, stable=True)
  return jnp.zeros(flat.shape, jnp.int32).at[order].set(
      jnp.arange(flat.size, dtype=jnp.int32)).reshape(jnp.shape(scores))


def top_k_mask_traced(scores: jax.Array, k: jax.Array) -> jax.Array:
  """Boolean mask keeping exactly the k largest ``scores`` (k may be a traced int)."""
  return ranks(scores) < k
