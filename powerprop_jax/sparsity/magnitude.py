"""Magnitude pruning during training: one-shot at a step, and gradual (Zhu & Gupta 2017).

Under Powerpropagation the stored params are v and w = sign(v)|v|^alpha; |v| and |w| rank
identically, so masks are computed from the stored params. Pruned weights are set to exactly 0
and stay there (grad_masks = masks).

A layer of n weights at sparsity s keeps round((1 - s) n) weights: the official notebook
truncates (int(p n)), which can keep one weight fewer; the two never differ by more than one.

With ``structure="N:M"`` (see :mod:`powerprop_jax.structured`) every pruned layer is N:M
instead: each group of M consecutive weights along axis -2 keeps its n_t largest |v|, with
n_t = round(M (1 - s_t)) on the cubic schedule from ``initial_sparsity`` to 1 - N/M, clipped
to [N, M]. n_t never increases, so each update keeps a subset of the previous mask and the
masks hold exactly n_t:M after every update, N:M from ``end_step`` on (one-shot: N:M at once).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from powerprop_jax import masks as masks_lib
from powerprop_jax import structured
from powerprop_jax import transform
from powerprop_jax.sparsity import schedules
from powerprop_jax.sparsity.base import MaskUpdate, SparsityMethod

PyTree = Any


def _all_true(params: PyTree) -> PyTree:
  return jax.tree_util.tree_map(lambda p: jnp.ones(jnp.shape(p), bool), params)


def gradual_pruning(counts: PyTree, begin_step: int, end_step: int, update_every: int,
                    initial_sparsity: float = 0.0, structure: str = "") -> SparsityMethod:
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
    structure: "" (unstructured) or "N:M": every leaf with a count >= 0 is pruned to n_t:M
      (module docstring), ending at exactly N:M whatever its count; raises ValueError for
      bad text, and at ``init`` for a pruned leaf whose axis -2 is not divisible by M.
  """
  nm = structured.parse_structure(structure)

  def layer_keep(n: int, final_kept: int, step) -> jax.Array:
    final = 1.0 - final_kept / n
    s = schedules.cubic_sparsity(step, final, begin_step, end_step, initial_sparsity)
    return jnp.round((1.0 - s) * n).astype(jnp.int32)

  def group_keep(step) -> jax.Array:
    n, m = nm
    s = schedules.cubic_sparsity(step, 1.0 - n / m, begin_step, end_step, initial_sparsity)
    return jnp.clip(jnp.round((1.0 - s) * m), n, m).astype(jnp.int32)

  def prune(params, masks, step):
    def leaf(p, m, c):
      if c < 0:
        return m
      scores = jnp.where(m, jnp.abs(p), -1.0)
      if nm is not None:
        keep = structured.nm_mask(scores, group_keep(step), nm[1])
      else:
        keep = masks_lib.top_k_mask(scores, layer_keep(p.size, c, step))
      return keep & m  # never revive a pruned weight
    return transform.zip_leaves(leaf, params, masks, counts)

  def init(params):
    if nm is not None:
      structured.check_nm_layers(params, counts, nm[1])
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


def oneshot_pruning(counts: PyTree, step: int = 0, structure: str = "") -> SparsityMethod:
  """Prune by magnitude once, at ``step`` (0: at init), then train with the masks fixed;
  ``structure="N:M"`` prunes every leaf with a count >= 0 to exactly N:M."""
  return gradual_pruning(counts, step, step, 1, structure=structure)
