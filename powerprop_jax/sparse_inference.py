"""Pruned Dense layers as ``jax.experimental.sparse`` matrices for inference.

Two paths, both exact up to float summation order:

* any model: :func:`to_bcoo` turns the selected 2-D kernels ``[in, out]`` into BCOO
  matrices holding only their non-zeros, and :func:`sparse_apply` runs an unchanged apply
  function (a Haiku ``hk.Linear`` or Flax ``nn.Dense`` model) on them through
  ``jax.experimental.sparse.sparsify``;
* MLPs: :func:`mlp_apply` with kernels from :func:`to_sparse`, where ``fmt="bcsr"`` stores
  each kernel transposed (``[out, in]``: BCSR products need the sparse operand on the left)
  and computes ``(W^T x^T)^T``, the faster path on CPU.

Only 2-D kernels become sparse: convolution kernels (and biases, norms) stay dense, since
``jax.experimental.sparse`` has no sparse convolution. Sparse kernels are built on the host
from concrete arrays (their number of stored entries is static), and they only pay off at
high sparsity: see ``scripts/bench_sparse_inference.py`` for the break-even.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from powerprop_jax import transform
from powerprop_jax.transform import ParamPredicate

PyTree = Any
Kernel = Any  # a dense [in, out] array, a BCOO [in, out] or a BCSR [out, in] (transposed)
FORMATS = ("bcoo", "bcsr")
_KERNELS = ("w", "kernel")
_BIASES = ("b", "bias")


def dense_kernels(module_name: str, name: str, shape: tuple[int, ...]) -> bool:
  """Default predicate: 2-D weight matrices (``w``/``kernel``); conv kernels excluded."""
  del module_name
  return name in _KERNELS and len(shape) == 2


def _is_sparse(x: Any) -> bool:
  return isinstance(x, (sparse.BCOO, sparse.BCSR))


def _bcoo(w: np.ndarray) -> sparse.BCOO:
  """BCOO of a 2-D array from its non-zeros, built on the host (row-major, sorted)."""
  index = np.argwhere(w != 0).astype(np.int32)
  return sparse.BCOO((jnp.asarray(w[tuple(index.T)]), jnp.asarray(index)), shape=w.shape,
                     indices_sorted=True, unique_indices=True)


def _bcsr(w: np.ndarray) -> sparse.BCSR:
  """BCSR of a 2-D array from its non-zeros, built on the host."""
  rows, cols = np.nonzero(w)
  indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=w.shape[0]))])
  return sparse.BCSR((jnp.asarray(w[rows, cols]), jnp.asarray(cols.astype(np.int32)),
                      jnp.asarray(indptr.astype(np.int32))), shape=w.shape,
                     indices_sorted=True, unique_indices=True)


def to_sparse(params: PyTree, fmt: Literal["bcoo", "bcsr"] = "bcoo",
              predicate: ParamPredicate = dense_kernels) -> PyTree:
  """``params`` with each selected 2-D kernel W ``[in, out]`` stored sparse.

  ``fmt="bcoo"``: ``BCOO`` of W, ``[in, out]``; ``fmt="bcsr"``: ``BCSR`` of W^T,
  ``[out, in]``. Built on the host from W's non-zeros (call outside jit); the number of
  stored entries is W's non-zero count. Other leaves are unchanged; a predicate selecting
  nothing raises ValueError.
  """
  if fmt not in FORMATS:
    raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
  chosen = transform.require_selection(params, predicate, "to_sparse")

  def convert(c: bool, x: Any) -> Any:
    if not c:
      return x
    if np.ndim(x) != 2:
      raise ValueError(f"to_sparse converts 2-D kernels only, got shape {np.shape(x)}")
    return _bcoo(np.asarray(x)) if fmt == "bcoo" else _bcsr(np.asarray(x).T)

  return jax.tree_util.tree_map(convert, chosen, params)


def to_bcoo(params: PyTree, predicate: ParamPredicate = dense_kernels) -> PyTree:
  """``to_sparse(params, "bcoo", predicate)``: selected 2-D kernels as BCOO ``[in, out]``."""
  return to_sparse(params, "bcoo", predicate)


def sparse_apply(apply_fn: Callable[..., Any]) -> Callable[..., Any]:
  """``apply_fn`` accepting BCOO kernels in its params (``jax.experimental.sparse.sparsify``).

  ``sparse_apply(model.apply)(to_bcoo(params), x)`` equals ``model.apply(params, x)``;
  jit it as usual. (The tracer mode is used: it supports ``custom_jvp`` functions such as
  ``jax.nn.relu``, which the default jaxpr mode cannot evaluate.)
  """
  return sparse.sparsify(apply_fn, use_tracer=True)


def matmul(x: jax.Array, kernel: Kernel) -> jax.Array:
  """``x [..., in] @ W`` for W dense ``[in, out]``, BCOO ``[in, out]`` or BCSR W^T."""
  if isinstance(kernel, sparse.BCSR):
    flat = x.reshape(-1, x.shape[-1])
    return (kernel @ flat.T).T.reshape(x.shape[:-1] + (kernel.shape[0],))
  return x @ kernel


def dense_bytes(params: PyTree, predicate: ParamPredicate = dense_kernels) -> int:
  """Bytes of the selected kernels held dense."""
  return sum(int(np.size(x)) * np.dtype(x.dtype).itemsize
             for _, _, x in transform.selected_leaves(params, predicate))


def sparse_bytes(params: PyTree) -> int:
  """Bytes of the sparse kernels' buffers (values and indices, BCSR's indptr too)."""
  leaves = jax.tree_util.tree_leaves(params, is_leaf=_is_sparse)
  return sum(sum(int(b.size) * b.dtype.itemsize for b in jax.tree_util.tree_leaves(x))
             for x in leaves if _is_sparse(x))


def mlp_layers(params: PyTree, layer_order: Sequence[str] = ()) -> list[tuple[Kernel, Any]]:
  """``[(kernel, bias or None)]`` of the modules holding a ``w``/``kernel`` leaf (dense 2-D
  or sparse), in ``layer_order`` (module names in creation order; default pytree order,
  which puts ``linear_10`` before ``linear_2``)."""
  modules: dict[str, dict[str, Any]] = {}
  flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_sparse)[0]
  for path, x in flat:
    module, name = transform.leaf_names(path)
    modules.setdefault(module, {})[name] = x
  layers = [m for m, leaves in modules.items() if any(k in leaves for k in _KERNELS)]
  out = []
  for module in transform.order_layers(layers, layer_order):
    leaves = modules[module]
    kernel = next(leaves[k] for k in _KERNELS if k in leaves)
    if not _is_sparse(kernel) and np.ndim(kernel) != 2:
      raise ValueError(f"mlp_apply needs 2-D kernels; {module!r} has shape {np.shape(kernel)}")
    out.append((kernel, next((leaves[b] for b in _BIASES if b in leaves), None)))
  if not out:
    raise ValueError("mlp_apply found no module with a 'w' or 'kernel' leaf")
  return out


def mlp_apply(params: PyTree, x: jax.Array, layer_order: Sequence[str] = (),
              activation: Callable[[jax.Array], jax.Array] = jax.nn.relu) -> jax.Array:
  """An MLP's logits: ``h = activation(h @ W_l + b_l)``, no activation after the last layer.

  ``params``: modules of ``{w|kernel, b|bias}`` (Haiku ``hk.nets.MLP`` or Flax ``Dense``
  names) whose kernels are dense, BCOO or BCSR (:func:`to_sparse`); ``x``: ``[..., in]``.
  """
  layers = mlp_layers(params, layer_order)
  for i, (kernel, bias) in enumerate(layers):
    x = matmul(x, kernel)
    if bias is not None:
      x = x + bias
    if i < len(layers) - 1:
      x = activation(x)
  return x
