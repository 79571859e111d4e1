"""Magnitude masks over parameter pytrees.

A mask tree has the structure of the params tree and a boolean array of the same shape at
every leaf (all True where a parameter is not subject to pruning), so masks and params can
always be zipped with ``jax.tree_util.tree_map``. Ranking by |w| and by |v| gives the same
order under Powerpropagation (w = sign(v)|v|^alpha is monotone in |v|), so masks may be
computed from either.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jax.experimental import checkify

from powerprop_jax import transform
from powerprop_jax.transform import ParamPredicate, weights_only

PyTree = Any
Sparsity = Union[float, Mapping[str, float]]


def validate_sparsity(sparsity: float, name: str = "sparsity") -> float:
  """Returns ``sparsity`` as a float, or raises ValueError unless it lies in [0, 1)."""
  try:
    value = float(sparsity)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number in [0, 1), got {sparsity!r}") from None
  if not math.isfinite(value) or not 0.0 <= value < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {sparsity!r}")
  return value


def num_kept(size: int, sparsity: float) -> int:
  """round((1 - sparsity) * size): how many weights a mask at ``sparsity`` keeps."""
  return int(round((1.0 - validate_sparsity(sparsity)) * size))


_SIGN = np.uint32(0x80000000)


def _order_keys(x: jax.Array) -> jax.Array:
  """uint32 keys with ``key(a) < key(b)`` iff ``a < b`` for float32 (+0 and -0 equal)."""
  x = jnp.asarray(x, jnp.float32)
  x = jnp.where(x == 0, jnp.zeros_like(x), x)  # -0.0 -> +0.0 (x + 0.0 is folded away by XLA)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jnp.where(bits & _SIGN, ~bits, bits | _SIGN)


def _kth_largest_key(keys: jax.Array, k: jax.Array) -> jax.Array:
  """The largest key T with ``#(keys >= T) >= k`` (the k-th largest key; max uint32 if k=0)."""

  def bit(i, t):
    candidate = t | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    return jnp.where(jnp.sum(keys >= candidate) >= k, candidate, t)

  return jax.lax.fori_loop(0, 32, bit, jnp.uint32(0))


def top_k_mask(scores: jax.Array, k: int | jax.Array) -> jax.Array:
  """Boolean mask of ``scores``' shape keeping exactly its k largest entries.

  An exact radix search, O(32 n) and no sort: each float32 score maps to a uint32 key with
  the same order, the k-th largest key is found bit by bit from the top (32 passes of
  compare-and-count), and ties at that key go to the lower flat index (one cumulative sum),
  so the result equals ``argsort(-scores, stable=True)[:k]`` as a set.

  ``k`` must be an integer in [0, size]. A concrete k (a Python or NumPy integer, or a
  concrete array) outside that range raises ValueError. A traced k (inside jit) cannot be
  checked while tracing: it is clamped to [0, size] (k < 0 keeps nothing, k > size keeps
  everything), and a ``checkify.debug_check`` reports it when the caller runs under
  ``checkify.checkify(f, errors=checkify.user_checks)`` (a no-op otherwise, so jit, pmap and
  sharding cost nothing).
  """
  n = int(np.size(scores))
  if not isinstance(k, jax.core.Tracer):
    if np.ndim(k) != 0 or not float(k).is_integer() or not 0 <= float(k) <= n:
      raise ValueError(f"k must be an integer in [0, {n}], got {k!r}")
  k = jnp.asarray(k, jnp.int32)
  checkify.debug_check((k >= 0) & (k <= n), f"top_k_mask: k must be in [0, {n}], got {{}}", k)
  k = jnp.clip(k, 0, n)
  keys = _order_keys(jnp.ravel(scores))
  t = _kth_largest_key(keys, k)
  above = keys > t
  tied = keys == t
  room = k - jnp.sum(above, dtype=jnp.int32)
  keep = above | (tied & (jnp.cumsum(tied, dtype=jnp.int32) <= room))
  return keep.reshape(jnp.shape(scores))


def keep_fractions(min_keep: float = 0.01, num: int = 20) -> np.ndarray:
  """Ascending keep fractions ``geomspace(min_keep, 1, num)`` (the last one is 1)."""
  if not 0.0 < float(min_keep) <= 1.0 or int(num) < 1 or int(num) != num:
    raise ValueError(f"keep fractions need min_keep_fraction in (0, 1] and an integer "
                     f"number of fractions >= 1, got {min_keep}, {num}")
  return np.geomspace(float(min_keep), 1.0, int(num))


def _leaf_sparsity(sparsity: Sparsity, layer: str) -> float:
  if isinstance(sparsity, Mapping):
    if layer not in sparsity:
      raise ValueError(f"no sparsity given for layer {layer!r}; "
                       f"layers given: {sorted(sparsity)}")
    return validate_sparsity(sparsity[layer], f"sparsity[{layer!r}]")
  return validate_sparsity(sparsity)


def _check_finite(leaf: Any, where: str) -> None:
  """Refuses NaN magnitudes (they would rank as the largest); skipped for traced values."""
  if not isinstance(leaf, jax.core.Tracer) and bool(jnp.any(jnp.isnan(leaf))):
    raise ValueError(f"NaN in the weights at {where!r}: magnitude masks cannot rank them "
                     "(NaN would count as the largest); the run has diverged")


def _aligned_candidates(params_flat: list[tuple[Any, Any]], candidates: PyTree
                        ) -> list[jax.Array]:
  """The leaves of ``candidates`` in the order of ``params_flat``, one per parameter.

  Raises ValueError (one line naming the leaf) for a leaf ``params`` lacks, a parameter with
  no candidate leaf, or a candidate whose shape differs from its parameter's (a broadcastable
  shape would silently misalign the masks).
  """
  name = lambda path: "/".join(transform.leaf_names(path))  # noqa: E731
  wanted = {name(path): np.shape(p) for path, p in params_flat}
  given = {}
  for path, c in jax.tree_util.tree_flatten_with_path(candidates)[0]:
    if name(path) not in wanted:
      raise ValueError(f"candidates has a leaf {name(path)!r} (shape {np.shape(c)}) that "
                       f"params lacks; params leaves: {list(wanted)[:8]}")
    given[name(path)] = c
  for leaf, shape in wanted.items():
    if leaf not in given:
      raise ValueError(f"candidates has no leaf for the parameter {leaf!r} (shape {shape}); "
                       "give a boolean array of the parameter's shape at every leaf")
    if np.shape(given[leaf]) != shape:
      raise ValueError(f"candidates at {leaf!r} has shape {np.shape(given[leaf])}, the "
                       f"parameter has shape {shape}")
  return [jnp.asarray(given[name(path)], bool) for path, _ in params_flat]


def magnitude_masks(params: PyTree, sparsity: Sparsity,
                    scope: Literal["global", "layerwise"] = "global",
                    predicate: ParamPredicate = weights_only,
                    candidates: Optional[PyTree] = None) -> PyTree:
  """Masks keeping the largest-|x| entries of the selected leaves.

  Args:
    params: pytree of arrays (effective weights w or stored v: same ranking).
    sparsity: fraction pruned, in [0, 1). With ``scope="layerwise"`` it may be a mapping
      from layer name (see ``transform.layer_shapes``) to that layer's sparsity.
    scope: "global" ranks all selected entries together and keeps exactly
      round((1 - sparsity) * n_total); "layerwise" keeps round((1 - s_l) * n_l) per leaf.
      (The official notebook truncates instead of rounding: at most one weight apart.)
    predicate: which leaves are prunable; the others get all-True masks.
    candidates: optional boolean tree with the leaves and shapes of ``params``; only
      candidate entries may be kept, and n counts the candidates (e.g. the weights a
      continual-learning task trained).

  Ties go to the lower flat index (then the earlier leaf). Returns a tree of boolean arrays
  with the structure and shapes of ``params``; a tree with no leaves (``{}``) gives itself
  back under either scope. Raises ValueError if ``predicate`` selects no leaf, a mapping
  names an unknown layer, a weight is NaN, or ``candidates`` has a leaf ``params`` lacks,
  lacks one, or has a leaf of another shape.
  """
  if scope not in ("global", "layerwise"):
    raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
  if scope == "global" and isinstance(sparsity, Mapping):
    raise ValueError("a per-layer sparsity mapping needs scope='layerwise'")
  if not isinstance(sparsity, Mapping):
    validate_sparsity(sparsity)
  chosen = jax.tree_util.tree_leaves(
      transform.require_selection(params, predicate, "magnitude_masks"))
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  layers = list(transform.layer_shapes(params, predicate))
  if isinstance(sparsity, Mapping) and set(sparsity) - set(layers):
    raise ValueError(f"per-layer sparsity names unknown layers {sorted(set(sparsity) - set(layers))}; "
                     f"prunable layers: {layers}")
  leaves = [jnp.asarray(x) for _, x in leaves_with_path]
  cands = ([None] * len(leaves) if candidates is None else
           _aligned_candidates(leaves_with_path, candidates))
  idx = [i for i, c in enumerate(chosen) if c]
  if not idx:  # a tree with no leaves (require_selection refuses leaves with none selected)
    return jax.tree_util.tree_unflatten(treedef, [jnp.ones(x.shape, bool) for x in leaves])
  for i in idx:
    _check_finite(leaves[i], jax.tree_util.keystr(leaves_with_path[i][0]))

  def scores(i):
    s = jnp.abs(leaves[i]).astype(jnp.float32)
    return s if cands[i] is None else jnp.where(cands[i], s, -jnp.inf)

  def size(i):
    return leaves[i].size if cands[i] is None else int(jnp.sum(cands[i]))

  masks = [jnp.ones(x.shape, bool) for x in leaves]
  if scope == "layerwise":
    for layer, i in zip(layers, idx):
      masks[i] = top_k_mask(scores(i), num_kept(size(i), _leaf_sparsity(sparsity, layer)))
  else:
    flat = jnp.concatenate([scores(i).ravel() for i in idx])
    keep = top_k_mask(flat, num_kept(sum(size(i) for i in idx), sparsity))
    splits = np.cumsum([leaves[i].size for i in idx])[:-1]
    for i, part in zip(idx, jnp.split(keep, splits)):
      masks[i] = part.reshape(leaves[i].shape)
  return jax.tree_util.tree_unflatten(treedef, masks)


def check_masks(params: PyTree, masks: PyTree) -> None:
  """Raises ValueError unless ``masks`` has the structure and leaf shapes of ``params``."""
  p_struct, m_struct = jax.tree_util.tree_structure(params), jax.tree_util.tree_structure(masks)
  if p_struct != m_struct:
    raise ValueError(f"mask tree does not match the params tree: masks {m_struct} "
                     f"vs params {p_struct}")
  for (path, p), m in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree_util.tree_leaves(masks)):
    if jnp.shape(p) != jnp.shape(m):
      raise ValueError(f"mask at {jax.tree_util.keystr(path)} has shape {jnp.shape(m)}, "
                       f"the parameter has shape {jnp.shape(p)}")
    if jnp.result_type(m) != jnp.bool_:
      raise ValueError(f"mask at {jax.tree_util.keystr(path)} has dtype {jnp.result_type(m)}; "
                       "masks must be boolean (e.g. masks = jax.tree.map(lambda m: m > 0, masks))")


def match_structure(masks: PyTree, params: PyTree) -> PyTree:
  """``masks`` re-laid in the tree structure of ``params`` when the two hold the same leaves
  under the same names and shapes but different containers (e.g. masks computed on a
  ``flax.nnx.State`` whose leaves sit in ``Param`` variables, used with the plain arrays
  that ``nnx.Optimizer`` hands its transformation). Other mismatches raise ValueError."""
  if jax.tree_util.tree_structure(masks) == jax.tree_util.tree_structure(params):
    return masks
  m_flat = jax.tree_util.tree_flatten_with_path(masks)[0]
  p_flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  same = len(m_flat) == len(p_flat) and all(
      transform.leaf_names(mp) == transform.leaf_names(pp_) and np.shape(m) == np.shape(p)
      for (mp, m), (pp_, p) in zip(m_flat, p_flat))
  if not same:
    check_masks(params, masks)  # raises with the details
  return jax.tree_util.tree_unflatten(treedef, [m for _, m in m_flat])


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
  """params * masks, leaf by leaf (masked entries become exactly 0)."""
  check_masks(params, masks)
  return jax.tree_util.tree_map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def layer_densities(masks: PyTree, predicate: ParamPredicate = weights_only
                    ) -> dict[str, float]:
  """``{"module/name": fraction of the leaf's entries kept}`` for each selected leaf of
  ``masks`` (host-side summary, as jaxpruner's ``summarize_sparsity`` gives per layer)."""
  return {f"{module}/{name}": float(np.count_nonzero(np.asarray(m))) / max(int(np.size(m)), 1)
          for module, name, m in transform.selected_leaves(masks, predicate)}


def sparsity_of(masks: PyTree, predicate: ParamPredicate = weights_only) -> float:
  """Fraction of zeros among the selected entries of ``masks`` (host-side summary)."""
  total = zeros = 0
  for _, _, m in transform.selected_leaves(masks, predicate):
    total += int(np.size(m))
    zeros += int(np.size(m) - np.count_nonzero(np.asarray(m)))
  return zeros / max(total, 1)
