"""Top-KAST (Jayakumar et al., NeurIPS 2020): always-sparse forward, larger sparse backward.

Per layer, with forward density D and backward density D + M:
* forward set A = top-D fraction of |theta|; the model computes with theta on A, 0 elsewhere
  (``masks`` = A);
* backward set B = top-(D + M) fraction, A inside B; the loss gradient, taken w.r.t. the sparse
  forward weights (dense: the training loop passes it straight through the mask), updates theta
  on B only (``grad_masks`` = B); theta outside B is kept (dense storage) but never changes;
* exploration penalty: L2 gradient lambda * theta on A and lambda / D * theta on B \\ A;
* A and B are recomputed every ``update_every`` steps from the current |theta|.

Under Powerpropagation theta is the stored v (|v| ranks as |w|); the forward uses
w = A * sign(v)|v|^alpha and the gradient reaching v on B is g_w * alpha |v|^(alpha-1).
The penalty acts on v.
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


def top_kast(forward_counts: PyTree, backward_counts: PyTree, penalty: float,
             update_every: int, end_step: int) -> SparsityMethod:
  """Top-KAST with per-layer keep counts (params-shaped trees, -1 = never pruned).

  ``backward_counts`` >= ``forward_counts`` leaf by leaf; sets are refreshed every
  ``update_every`` steps up to ``end_step``.
  """

  def sets(params):
    def leaf(p, kf, kb):
      if kf < 0:
        full = jnp.ones(p.shape, bool)
        return full, full
      return (masks_lib.top_k_mask(jnp.abs(p), kf), masks_lib.top_k_mask(jnp.abs(p), kb))
    pairs = transform.zip_leaves(leaf, params, forward_counts, backward_counts)
    is_pair = lambda x: isinstance(x, tuple)  # noqa: E731
    a = jax.tree_util.tree_map(lambda t: t[0], pairs, is_leaf=is_pair)
    b = jax.tree_util.tree_map(lambda t: t[1], pairs, is_leaf=is_pair)
    return a, b

  def penalty_grads(params, a, b):
    def leaf(p, ma, mb, kf):
      if kf < 0 or penalty == 0.0:
        return jnp.zeros_like(p)
      density = kf / p.size
      coeff = jnp.where(ma, penalty, jnp.where(mb, penalty / density, 0.0))
      return (coeff * p).astype(p.dtype)
    return transform.zip_leaves(leaf, params, a, b, forward_counts)

  def init(params):
    a, b = sets(params)
    return MaskUpdate(params, a, b, ())

  def update(params, dense_grads, a, b, state, step):
    del dense_grads
    a, b = jax.lax.cond(schedules.is_update_step(step, 0, end_step, update_every),
                        lambda: sets(params), lambda: (a, b))
    return MaskUpdate(params, a, b, state)

  return SparsityMethod(init, update, penalty_grads)
