"""RigL (Evci et al., 2020) and SET (Mocanu et al., 2018): sparse from step 0, drop and grow.

Masks start random with exact per-layer counts (e.g. ERK). At every ``update_every`` steps up
to ``end_step``, per layer, with f_t = drop_fraction * (1 + cos(pi t / end_step)) / 2:
* drop k = floor(f_t * n_active) active weights with the smallest |w|;
* grow k weights outside the surviving set (a weight just dropped may be chosen again): RigL
  by the largest dense gradient |dL/dw| (the loop passes the gradient w.r.t. the effective
  weights, defined at zero weights too), SET at random. The active count never changes.
* as in RigL's reference code, only weights that were *inactive before the update* are
  (re)initialised (``grow_init`` below) and have their optimizer state (momentum) reset (by
  the wrapper in :mod:`.base`, where new grad_masks & ~old grad_masks); a weight that was
  active, dropped and grown back in the same update keeps its value and its momentum.

Under Powerpropagation the stored params are v, magnitudes |v| (same order as |w|), gradients
g_w = dL/dw. A weight grown at v = 0 can never move for alpha > 1 (dw/dv = 0 there), so
``grow_init`` chooses where it starts:
* "auto" (the default): "zero" for alpha == 1, "min_active" for alpha > 1;
* "zero": v = 0 (plain RigL; right for alpha = 1, stuck weights for alpha > 1);
* "min_active": v = -sign(g_w) * (smallest |v| kept in the layer), i.e. just like the weakest
  surviving weight, pointing downhill;
* "w_epsilon": w = -sign(g_w) * epsilon, i.e. v = -sign(g_w) * epsilon^(1/alpha).

With ``structure="N:M"`` (see :mod:`powerprop_jax.structured`) every pruned layer holds
exactly N of every M consecutive weights along axis -2 from step 0 on: the initial mask
picks N per group at random, the drop is the per-layer one above, and each group then grows
back as many as it lost, among the weights inactive before the update (largest |dL/dw| for
RigL, at random for SET; ties to the lower in-group index). A weight dropped in this update
is regrown only as a fallback, when its group has fewer such weights than it lost (possible
only if floor(f_t n_active) > M - N); like any dropped-and-regrown weight it keeps its value
and momentum. The layer's active count is N/M of its size, whatever its entry in ``counts``.

Non-finite values never spread: a NaN dense gradient ranks below every finite one for growth
(so a NaN at an inactive weight cannot make it grow, nor give it a NaN value), a grown
weight's direction is +1 where sign(g_w) is NaN, and "min_active" ignores NaN weights.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from powerprop_jax import masks as masks_lib
from powerprop_jax import structured, transform
from powerprop_jax.sparsity import schedules
from powerprop_jax.sparsity.base import MaskUpdate, SparsityMethod

PyTree = Any
GROW_INITS = ("auto", "zero", "min_active", "w_epsilon")


def resolve_grow_init(grow_init: str, alpha: float) -> str:
  """The grow rule to use: "auto" is "zero" for alpha == 1 and "min_active" for alpha > 1."""
  if grow_init not in GROW_INITS:
    raise ValueError(f"sparsity.grow_init must be one of {GROW_INITS}, got {grow_init!r}")
  if grow_init == "auto":
    return "zero" if alpha == 1.0 else "min_active"
  return grow_init


def _grown_values(p, g, keep, grow_init: str, alpha: float, epsilon: float):
  direction = -jnp.sign(g)
  direction = jnp.where(jnp.isnan(direction) | (direction == 0), 1.0, direction)
  if grow_init == "zero":
    return jnp.zeros_like(p)
  if grow_init == "min_active":
    smallest = jnp.min(jnp.where(keep & ~jnp.isnan(p), jnp.abs(p), jnp.inf))
    smallest = jnp.where(jnp.isfinite(smallest), smallest, 0.0)
    return (direction * smallest).astype(p.dtype)
  if grow_init == "w_epsilon":
    return (direction * transform.inverse_powerprop(jnp.asarray(epsilon, p.dtype), alpha)
            ).astype(p.dtype)
  raise ValueError(f"sparsity.grow_init must be one of {GROW_INITS}, got {grow_init!r}")


def nm_regrow(keep: jax.Array, before: jax.Array, score: jax.Array, n: int, m: int
              ) -> jax.Array:
  """Where to grow so that every group of ``m`` along axis -2 holds ``n`` again.

  ``keep`` (the survivors of the drop, at most ``n`` per group), ``before`` (the mask before
  the update) and ``score`` (higher grows first) share a kernel's shape ``[..., I, O]``.
  Group ``[..., g, :, o]`` grows its ``n - |keep|`` best-scored weights among ``~before``,
  then, as a fallback when those are too few, among the just dropped ``before & ~keep``; ties
  go to the lower in-group index. Two stable argsorts along the group axis of the
  ``[..., I // m, m, O]`` view order by (tier, score); ranks below the loss are grown.
  """
  keep_g, before_g, score_g = (structured.group_view(x, m) for x in (keep, before, score))
  lost = n - keep_g.sum(axis=-2, keepdims=True)                  # [..., I // m, 1, O]
  tier = jnp.where(keep_g, 0, jnp.where(before_g, 1, 2))        # 2: inactive, 1: dropped
  by_score = jnp.argsort(-score_g, axis=-2, stable=True)
  by_tier = jnp.argsort(-jnp.take_along_axis(tier, by_score, axis=-2), axis=-2, stable=True)
  rank = jnp.argsort(jnp.take_along_axis(by_score, by_tier, axis=-2), axis=-2)
  return ((rank < lost) & ~keep_g).reshape(jnp.shape(keep))


def drop_and_grow(counts: PyTree, drop_fraction: float, update_every: int, end_step: int,
                  grow: str = "gradient", grow_init: str = "auto", alpha: float = 1.0,
                  epsilon: float = 1e-3, seed: int = 0, structure: str = "") -> SparsityMethod:
  """RigL (``grow="gradient"``) or SET (``grow="random"``) with per-layer keep counts.

  ``counts`` is a params-shaped tree of active counts (-1 for leaves never pruned);
  ``grow_init`` one of ``GROW_INITS`` ("auto" resolves by ``alpha``, see the module doc).
  Masks change at ``update_every``, 2 ``update_every``, ... up to ``end_step`` (RigL: 75% of
  training); with ``end_step`` < ``update_every`` they never change (static sparse training).
  ``structure``: "" (unstructured) or "N:M": every leaf with a count >= 0 holds exactly N of
  every M along axis -2 at init and after every update (module doc); raises ValueError for
  bad text, and at ``init`` for a pruned leaf whose axis -2 is not divisible by M.
  """
  if grow not in ("gradient", "random"):
    raise ValueError(f"grow must be 'gradient' or 'random', got {grow!r}")
  if not 0.0 <= float(drop_fraction) <= 1.0:
    raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction!r}")
  if int(update_every) < 1:
    raise ValueError(f"update_every must be >= 1, got {update_every!r}")
  alpha = transform.validate_alpha(alpha)
  grow_init = resolve_grow_init(grow_init, alpha)
  nm = structured.parse_structure(structure)
  leaves = jax.tree_util.tree_leaves(counts)

  def random_masks(params, key):
    keys = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(counts),
                                        list(jax.random.split(key, len(leaves))))
    def leaf(p, c, k):
      if c < 0:
        return jnp.ones(p.shape, bool)
      if nm is not None:
        return structured.nm_mask(jax.random.uniform(k, p.shape), nm[0], nm[1])
      return masks_lib.top_k_mask(jax.random.uniform(k, p.shape), c)
    return transform.zip_leaves(leaf, params, counts, keys)

  def init(params):
    if nm is not None:
      structured.check_nm_layers(params, counts, nm[1])
    key = jax.random.PRNGKey(seed)
    key, sub = jax.random.split(key)
    masks = random_masks(params, sub)
    return MaskUpdate(masks_lib.apply_masks(params, masks), masks, masks, key)

  def drop_grow(params, grads, masks, key, step):
    fraction = schedules.cosine_drop_fraction(step, drop_fraction, end_step)
    key, sub = jax.random.split(key)
    keys = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(counts),
                                        list(jax.random.split(sub, len(leaves))))

    def leaf(p, g, m, c, k):
      if c < 0:
        return p, m
      if nm is not None:
        c = p.size // nm[1] * nm[0]   # N:M holds N/M of the layer, whatever its count
      n_drop = jnp.floor(fraction * c).astype(jnp.int32)
      keep = masks_lib.top_k_mask(jnp.where(m, jnp.abs(p), -jnp.inf), c - n_drop) & m
      # |g| >= 0; a NaN gradient scores -1: grown last (-inf marks the kept weights)
      score = (jnp.where(jnp.isnan(g), -1.0, jnp.abs(g)) if grow == "gradient"
               else jax.random.uniform(k, p.shape))
      if nm is not None:
        selected = nm_regrow(keep, m, score, nm[0], nm[1])
      else:
        selected = masks_lib.top_k_mask(jnp.where(keep, -jnp.inf, score), n_drop) & ~keep
      new_m = keep | selected
      grown = selected & ~m  # newly active: re-initialised; dropped-and-regrown keep p
      new_p = jnp.where(grown, _grown_values(p, g, keep, grow_init, alpha, epsilon), p)
      return jnp.where(new_m, new_p, jnp.zeros_like(p)), new_m

    pairs = transform.zip_leaves(leaf, params, grads, masks, counts, keys)
    is_pair = lambda x: isinstance(x, tuple)  # noqa: E731
    return (jax.tree_util.tree_map(lambda t: t[0], pairs, is_leaf=is_pair),
            jax.tree_util.tree_map(lambda t: t[1], pairs, is_leaf=is_pair), key)

  def update(params, dense_grads, masks, grad_masks, key, step):
    del grad_masks
    params, masks, key = jax.lax.cond(
        schedules.is_update_step(step, update_every, end_step, update_every),
        lambda: drop_grow(params, dense_grads, masks, key, step),
        lambda: (masks_lib.apply_masks(params, masks), masks, key))
    return MaskUpdate(params, masks, masks, key)

  return SparsityMethod(init, update)


def rigl(counts: PyTree, drop_fraction: float = 0.3, update_every: int = 100,
         end_step: int = 0, grow_init: str = "auto", alpha: float = 1.0,
         epsilon: float = 1e-3, seed: int = 0, structure: str = "") -> SparsityMethod:
  """RigL: grow by the largest dense-gradient magnitude |dL/dw| (``structure``: "N:M").

  Pass ``end_step`` (RigL: 75% of training): with the default 0 masks never change.
  """
  return drop_and_grow(counts, drop_fraction, update_every, end_step, "gradient", grow_init,
                       alpha, epsilon, seed, structure)


def set_method(counts: PyTree, drop_fraction: float = 0.3, update_every: int = 100,
               end_step: int = 0, grow_init: str = "auto", alpha: float = 1.0,
               epsilon: float = 1e-3, seed: int = 0, structure: str = "") -> SparsityMethod:
  """SET: grow uniformly at random among the inactive weights (``structure``: "N:M").

  Pass ``end_step`` (RigL: 75% of training): with the default 0 masks never change.
  """
  return drop_and_grow(counts, drop_fraction, update_every, end_step, "random", grow_init,
                       alpha, epsilon, seed, structure)
