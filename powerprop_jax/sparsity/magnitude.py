"""Magnitude pruning during training: one-shot at a step, and gradual (Zhu & Gupta 2017).

Under Powerpropagation the stored params are v and w = sign(v)|v|^alpha; |v| and |w| rank
identically, so masks are computed from the stored params. Pruned weights are set to exactly 0
and stay there (grad_masks = masks).

A layer of n weights at sparsity s keeps round((1 - s) n) weights: the official notebook
truncates (int(p n)), which can keep one weight fewer; the two never differ by more than one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from powerprop_jax import masks as masks_lib
from powerprop_jax import transform
from powerprop_jax.sparsity import schedules
from powerprop_jax.sparsity.base import MaskUpdate, SparsityMethod

PyTree = Any


def _all_true(params: PyTree) -> PyTree:
  return jax.tree_util.tree_map(lambda p: jnp.ones(jnp.shape(p), bool), params)


def gradual_pruning(counts: PyTree, begin_step: int, end_step: int, update_every: int,
                    initial_sparsity: float = 0.0) -> SparsityMethod:
  """Dense-to-sparse pruning on the cubic schedule.

  Args:
    counts: params-shaped tree of final keep counts (-1 for leaves never pruned), e.g. from
      ``distributions.counts_tree``.
    begin_step, end_step, update_every: masks are recomputed at begin, begin + every, ...
      and at end itself (also when end - begin is not a multiple of update_every), so the
      final sparsity holds from end_step on; layer l keeps round(n_l (1 - s_l(t))) with
      s_l(t) = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3 the cubic schedule from
      ``initial_sparsity`` s_i to the layer's final sparsity s_f = 1 - counts_l / n_l.
      begin == end gives one-shot pruning at that step.
  """

  def layer_keep(n: int, final_kept: int, step) -> jax.Array:
    final = 1.0 - final_kept / n
    s = schedules.cubic_sparsity(step, final, begin_step, end_step, initial_sparsity)
    return jnp.round((1.0 - s) * n).astype(jnp.int32)

  def prune(params, masks, step):
    def leaf(p, m, c):
      if c < 0:
        return m
      keep = masks_lib.top_k_mask(jnp.where(m, jnp.abs(p), -1.0), layer_keep(p.size, c, step))
      return keep & m  # never revive a pruned weight
    return transform.zip_leaves(leaf, params, masks, counts)

  def init(params):
    masks = _all_true(params)
    if begin_step == 0:
      masks = prune(params, masks, 0)
    return MaskUpdate(masks_lib.apply_masks(params, masks), masks, masks, ())

  def update(params, dense_grads, masks, grad_masks, state, step):
    del dense_grads, grad_masks
    masks = jax.lax.cond(schedules.is_update_step(step, begin_step, end_step, update_every,
                                                  include_end=True),
                         lambda: prune(params, masks, step), lambda: masks)
    return MaskUpdate(masks_lib.apply_masks(params, masks), masks, masks, state)

  return SparsityMethod(init, update)


def oneshot_pruning(counts: PyTree, step: int = 0) -> SparsityMethod:
  """Prune by magnitude once, at ``step`` (0: at init), then train with the masks fixed."""
  return gradual_pruning(counts, step, step, 1)
