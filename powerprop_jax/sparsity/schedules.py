"""Step schedules for sparse training, as jittable functions of a traced step."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cubic_sparsity(step: jax.Array, final: float, begin: int, end: int,
                   initial: float = 0.0) -> jax.Array:
  """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3 on [t0, t1].

  ``initial`` before ``begin``, ``final`` from ``end`` on.
  """
  t = jnp.asarray(step, jnp.float32)
  progress = jnp.clip((t - begin) / max(end - begin, 1), 0.0, 1.0)
  return jnp.where(t >= end, final, final + (initial - final) * (1.0 - progress) ** 3)


def cosine_drop_fraction(step: jax.Array, initial: float, end: int) -> jax.Array:
  """RigL: f_t = initial * (1 + cos(pi t / end)) / 2 for t <= end, 0 after."""
  t = jnp.asarray(step, jnp.float32)
  return jnp.where(t <= end, initial * 0.5 * (1.0 + jnp.cos(jnp.pi * t / max(end, 1))), 0.0)


def is_update_step(step: jax.Array, begin: int, end: int, every: int,
                   include_end: bool = False) -> jax.Array:
  """True at begin, begin + every, ... up to and including end.

  ``include_end``: ``end`` itself is an update step even when ``end - begin`` is not a
  multiple of ``every`` (so a schedule's final value is applied exactly at ``end``).
  """
  step = jnp.asarray(step)
  on_grid = (step >= begin) & (step <= end) & ((step - begin) % every == 0)
  return (on_grid | (step == end)) if include_end else on_grid
