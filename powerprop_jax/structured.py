"""N:M structured sparsity: at most N non-zeros in every group of M consecutive weights.

Groups run along axis -2 of a kernel, the reduction axis: the input features of a Dense
kernel ``[in, out]`` and the input channels of a conv kernel ``[h, w, in, out]``. A kernel
of shape ``[..., I, O]`` is viewed as ``[..., I // M, M, O]`` and each ``[g, :, o]`` column
of that view is one group, so an N:M kernel feeds N of every M inputs into each output, the
pattern sparse tensor cores (2:4) accelerate. I must be divisible by M.

Masks keep the N largest |w| of each group (ties to the lower index), which under
Powerpropagation equals ranking by |v|. ``nm_compress`` stores a kernel as its N values per
group and their in-group positions in [0, M); ``nm_decompress`` inverts it exactly.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from powerprop_jax import transform
from powerprop_jax.transform import ParamPredicate, weights_only

PyTree = Any


def parse_structure(text: str) -> Optional[tuple[int, int]]:
  """``"N:M"`` -> ``(N, M)``; ``""`` -> None (unstructured). Needs integers 1 <= N < M."""
  if not isinstance(text, str):
    raise ValueError(f"structure must be a string 'N:M' (e.g. '2:4') or '', got {text!r}")
  text = text.strip()
  if not text:
    return None
  parts = text.split(":")
  try:
    n, m = (int(p) for p in parts) if len(parts) == 2 else (None, None)
  except ValueError:
    n = m = None
  if n is None or not 1 <= n < m:
    raise ValueError(f"structure must be 'N:M' with integers 1 <= N < M (e.g. '2:4'), "
                     f"or '' for none; got {text!r}")
  return n, m


def check_groups(shape: tuple[int, ...], m: int, layer: str = "") -> None:
  """Raises ValueError unless ``shape`` has ndim >= 2 and axis -2 divisible by ``m``."""
  if len(shape) < 2 or shape[-2] % m:
    raise ValueError(f"N:M groups of {m} run along axis -2 (the input axis), but layer "
                     f"{layer!r} has shape {tuple(shape)}: axis -2 must be divisible by {m}; "
                     "keep the layer dense (e.g. exclude it with the predicate)")


def check_nm_layers(params: PyTree, counts: PyTree, m: int) -> None:
  """ValueError naming the first pruned leaf (a ``counts`` leaf >= 0; -1 = never pruned)
  whose axis -2 is not divisible by ``m``."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, p), c in zip(flat, jax.tree_util.tree_leaves(counts)):
    if c >= 0:
      check_groups(np.shape(p), m, "/".join(transform.leaf_names(path)))


def group_view(x: Any, m: int) -> Any:
  """``[..., I, O]`` -> ``[..., I // m, m, O]``: each ``[..., g, :, o]`` is one group."""
  shape = np.shape(x)
  check_groups(shape, m)
  return x.reshape(shape[:-2] + (shape[-2] // m, m, shape[-1]))


def nm_mask(scores: jax.Array, n: int | jax.Array, m: int) -> jax.Array:
  """Boolean mask of ``scores``' shape keeping the ``n`` largest scores of each group of
  ``m`` along axis -2 (ties to the lower index; NaN ranks lowest). ``n`` may be traced."""
  groups = group_view(jnp.asarray(scores, jnp.float32), m)
  order = jnp.argsort(-groups, axis=-2, stable=True)
  rank = jnp.argsort(order, axis=-2)
  return (rank < n).reshape(jnp.shape(scores))


def nm_masks(params: PyTree, n: int, m: int, predicate: ParamPredicate = weights_only
             ) -> PyTree:
  """Masks with exactly ``n`` of every ``m`` consecutive weights along axis -2 kept (the
  largest |x|) in each leaf ``predicate`` selects; all True elsewhere.

  Raises ValueError for 1 <= n < m violated, a selected leaf whose axis -2 is not divisible
  by ``m`` (naming it and its shape), or a predicate that selects nothing.
  """
  parse_structure(f"{n}:{m}")
  chosen = jax.tree_util.tree_leaves(transform.require_selection(params, predicate, "nm_masks"))
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  out = []
  for (path, x), c in zip(flat, chosen):
    if c:
      check_groups(np.shape(x), m, "/".join(transform.leaf_names(path)))
      out.append(nm_mask(jnp.abs(jnp.asarray(x)), n, m))
    else:
      out.append(jnp.ones(np.shape(x), bool))
  return jax.tree_util.tree_unflatten(treedef, out)


def group_counts(x: Any, m: int) -> Any:
  """Non-zeros per group: ``[..., I, O]`` -> ``[..., I // m, O]`` integer counts."""
  return (group_view(x, m) != 0).sum(axis=-2)


def check_nm(masks: PyTree, n: int, m: int, predicate: ParamPredicate = weights_only) -> None:
  """Raises ValueError unless every selected leaf of ``masks`` keeps exactly ``n`` per group
  of ``m`` along axis -2 (host-side check on concrete masks)."""
  for path, x in jax.tree_util.tree_flatten_with_path(masks)[0]:
    if not transform.is_selected(path, x, predicate):
      continue
    layer = "/".join(transform.leaf_names(path))
    check_groups(np.shape(x), m, layer)
    counts = np.asarray(group_counts(np.asarray(x), m))
    bad = np.argwhere(counts != n)
    if bad.size:
      first = tuple(int(i) for i in bad[0])
      raise ValueError(f"layer {layer!r} is not {n}:{m}: {len(bad)} of {counts.size} groups "
                       f"keep another count than {n}, e.g. group {first} keeps "
                       f"{counts[first]}")


def nm_compress(w: Any, n: int, m: int) -> tuple[Any, Any]:
  """An N:M kernel ``[..., I, O]`` as ``(values, indices)``, both ``[..., I // m, n, O]``.

  ``indices`` (uint8 for m <= 256, else uint16) are each group's kept in-group positions
  in ascending order, ``values`` the weights there: the non-zeros, padded with the
  lowest-position zeros when a group has fewer than n. NumPy in, NumPy out (any dtype;
  jax arrays give jax arrays). Exact, except that -0.0 counts as a zero and may come back
  as +0.0: compress an unsigned-integer view of the bits to keep it (as ``export`` does).
  Raises ValueError if a group has more than n non-zeros (``w != 0``).
  """
  xp = jnp if isinstance(w, jax.Array) else np
  parse_structure(f"{n}:{m}")
  groups = group_view(w, m)
  zero = groups == 0
  if not isinstance(w, jax.core.Tracer) and int((~zero).sum(axis=-2).max(initial=0)) > n:
    raise ValueError(f"nm_compress: a group of {m} along axis -2 of the shape "
                     f"{tuple(np.shape(w))} kernel holds more than {n} non-zeros")
  first = xp.argsort(zero, axis=-2, stable=True)[..., :n, :]  # non-zeros first, by position
  indices = xp.sort(first, axis=-2).astype(np.uint8 if m <= 256 else np.uint16)
  return xp.take_along_axis(groups, indices.astype(np.int64 if xp is np else np.int32),
                            axis=-2), indices


def nm_decompress(values: Any, indices: Any, m: int) -> Any:
  """Inverse of :func:`nm_compress`: ``[..., G, n, O]`` values and positions -> the dense
  ``[..., G * m, O]`` kernel, zero outside the positions."""
  xp = jnp if isinstance(values, jax.Array) else np
  shape = np.shape(values)
  if np.shape(indices) != shape or len(shape) < 3:
    raise ValueError(f"nm_decompress needs values and indices of one shape [..., G, n, O], "
                     f"got {shape} and {np.shape(indices)}")
  values, indices = xp.asarray(values), xp.asarray(indices)
  hits = indices[..., None, :, :] == xp.arange(m).reshape(m, 1, 1)      # [..., G, m, n, O]
  source = xp.argmax(hits, axis=-2)                                     # [..., G, m, O]
  dense = xp.where(hits.any(axis=-2), xp.take_along_axis(values, source, axis=-2),
                   xp.zeros((), values.dtype))
  return dense.reshape(shape[:-3] + (shape[-3] * m, shape[-1]))
