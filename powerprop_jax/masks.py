"""Magnitude masks over parameter pytrees.

A mask tree has the structure of the params tree and a boolean array of the same shape at
every leaf (all True where a parameter is not subject to pruning), so masks and params can
always be zipped with ``jax.tree_util.tree_map``. Ranking by |w| and by |v| gives the same
order under Powerpropagation (w = sign(v)|v|^alpha is monotone in |v|), so masks may be
computed from either.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping, Union

import jax
import jax.numpy as jnp
import numpy as np

from powerprop_jax import select, transform
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


def top_k_mask(scores: jax.Array, k: int | jax.Array) -> jax.Array:
  """Boolean mask of ``scores``' shape keeping exactly its k largest entries.

  Ties are broken deterministically towards the lower flat index (as a stable sort would);
  ``k`` may be traced inside jit. Runs in O(32 n) with no sort (see ``select``).
  """
  if isinstance(k, (int, np.integer)) and not 0 <= k <= np.size(scores):
    raise ValueError(f"k must be in [0, {np.size(scores)}], got {k}")
  return select.top_k_mask(scores, k)


def _leaf_sparsity(sparsity: Sparsity, module_name: str) -> float:
  if isinstance(sparsity, Mapping):
    if module_name not in sparsity:
      raise ValueError(f"no sparsity given for layer {module_name!r}; "
                       f"layers given: {sorted(sparsity)}")
    return validate_sparsity(sparsity[module_name], f"sparsity[{module_name!r}]")
  return validate_sparsity(sparsity)


def magnitude_masks(params: PyTree, sparsity: Sparsity,
                    scope: Literal["global", "layerwise"] = "global",
                    predicate: ParamPredicate = weights_only) -> PyTree:
  """Masks keeping the largest-|x| entries of the selected leaves.

  Args:
    params: pytree of arrays (effective weights w or stored v: same ranking).
    sparsity: fraction pruned, in [0, 1). With ``scope="layerwise"`` it may be a mapping
      from module name (the path of a leaf without its last key) to that layer's sparsity.
    scope: "global" ranks all selected entries together and keeps exactly
      round((1 - sparsity) * n_total); "layerwise" keeps round((1 - s_l) * n_l) per leaf.
    predicate: which leaves are prunable; the others get all-True masks.

  Returns:
    A tree of boolean arrays with the structure and shapes of ``params``.
  """
  if scope not in ("global", "layerwise"):
    raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
  if scope == "global" and isinstance(sparsity, Mapping):
    raise ValueError("a per-layer sparsity mapping needs scope='layerwise'")
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [transform._path_names(path) for path, _ in leaves_with_path]
  leaves = [jnp.asarray(x) for _, x in leaves_with_path]
  chosen = [predicate(m, n, tuple(x.shape)) for (m, n), x in zip(names, leaves)]
  masks = [jnp.ones(x.shape, bool) for x in leaves]
  if scope == "layerwise":
    for i, ((module_name, _), x) in enumerate(zip(names, leaves)):
      if chosen[i]:
        masks[i] = top_k_mask(jnp.abs(x), num_kept(x.size, _leaf_sparsity(sparsity, module_name)))
  else:
    idx = [i for i, c in enumerate(chosen) if c]
    if idx:
      scores = jnp.concatenate([jnp.abs(leaves[i]).ravel().astype(jnp.float32) for i in idx])
      keep = top_k_mask(scores, num_kept(scores.size, sparsity))
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


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
  """params * masks, leaf by leaf (masked entries become exactly 0)."""
  check_masks(params, masks)
  return jax.tree_util.tree_map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def sparsity_of(masks: PyTree, predicate: ParamPredicate = weights_only) -> float:
  """Fraction of zeros among the selected entries of ``masks`` (host-side summary)."""
  total = zeros = 0
  for (path, m) in jax.tree_util.tree_flatten_with_path(masks)[0]:
    if predicate(*transform._path_names(path), tuple(np.shape(m))):
      total += int(np.size(m))
      zeros += int(np.size(m) - np.count_nonzero(np.asarray(m)))
  return zeros / max(total, 1)
