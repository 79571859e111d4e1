"""How a total sparsity is spread over layers: uniform or Erdos-Renyi-Kernel (ERK).

Both return exact per-layer *keep counts* (Python ints, keyed by module name) for the
predicate-selected leaves, so masks built from them hit their targets exactly.

* uniform: every prunable layer not listed dense keeps round((1 - S) * n_l) (the RigL and
  Top-KAST convention; with dense layers the total sparsity is below S). The official
  Powerpropagation notebook truncates instead (int(p * n)); the two counts are at most one
  weight apart.
* erk: density_l = eps * (sum of dims_l) / (prod of dims_l), eps chosen so the total kept is
  round((1 - S) * N) exactly; a layer whose density would exceed 1 is made dense and eps is
  re-solved for the rest (RigL's ``erdos_renyi_kernel``). Counts are rounded by largest
  remainder so their sum is exact.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np

from powerprop_jax import masks as masks_lib
from powerprop_jax import transform

PyTree = Any
DISTRIBUTIONS = ("uniform", "erk")


def resolve_dense_layers(names: Sequence[str], dense_layers: str | Sequence[str],
                         layer_order: Sequence[str] = ()) -> set[str]:
  """Module names to keep dense, from a list or a comma string with aliases first/last.

  "first"/"last" follow ``layer_order`` (module names in the order the model creates them,
  see ``models.creation_order``) where given, else ``names``' (pytree, i.e. sorted) order.
  """
  # a name is a module, or "module/param" where one module has several prunable params
  names = transform.order_layers(names, layer_order)
  if isinstance(dense_layers, str):
    dense_layers = [d.strip() for d in dense_layers.split(",") if d.strip()]
  out = set()
  for d in dense_layers:
    if d == "first":
      out.add(names[0])
    elif d == "last":
      out.add(names[-1])
    elif d in names:
      out.add(d)
    else:
      raise ValueError(f"dense layer {d!r} is not a prunable layer; layers: {list(names)}")
  return out


def erk_densities(shapes: dict[str, tuple[int, ...]], sparsity: float,
                  dense: set[str] = frozenset(), power_scale: float = 1.0) -> dict[str, float]:
  """ERK densities (floats) per layer: RigL's algorithm, dense layers at density 1."""
  density = 1.0 - sparsity
  dense = set(dense)
  while True:
    divisor, rhs, raw = 0.0, 0.0, {}
    for name, shape in shapes.items():
      n = float(np.prod(shape))
      if name in dense:
        rhs -= n * sparsity  # a dense layer's zeros must be found in the other layers
      else:
        rhs += n * density
        raw[name] = (np.sum(shape) / np.prod(shape)) ** power_scale
        divisor += raw[name] * n
    if not raw:
      raise ValueError(f"sparsity {sparsity} cannot be met with every layer dense")
    if rhs <= 0:
      raise ValueError(f"sparsity {sparsity} cannot be met: the dense layers {sorted(dense)} "
                       f"alone hold more than {1 - sparsity:.4g} of the weights; lower "
                       "sparsity.level or keep fewer layers dense")
    eps = rhs / divisor
    max_raw = max(raw.values())
    if max_raw * eps <= 1.0:
      break
    dense.update(n for n, r in raw.items() if r == max_raw)
  return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


def _exact_counts(shapes: dict[str, tuple[int, ...]], densities: dict[str, float],
                  total: int) -> dict[str, int]:
  """Largest-remainder rounding of density * n so the counts sum to ``total`` exactly."""
  sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
  exact = {n: min(densities[n], 1.0) * sizes[n] for n in shapes}
  counts = {n: min(int(math.floor(v)), sizes[n]) for n, v in exact.items()}
  order = sorted(shapes, key=lambda n: (-(exact[n] - counts[n]), list(shapes).index(n)))
  i = 0
  while sum(counts.values()) < total and i < 10 * len(order):
    n = order[i % len(order)]
    if counts[n] < sizes[n]:
      counts[n] += 1
    i += 1
  return counts


def keep_counts(params: PyTree, sparsity: float, distribution: str = "uniform",
                dense_layers: str | Sequence[str] = "",
                predicate: transform.ParamPredicate = transform.weights_only,
                layer_order: Sequence[str] = ()) -> dict[str, int]:
  """{module_name: number of weights kept} for the prunable layers of ``params``.

  ``layer_order`` (creation order of module names) places the "first"/"last" dense layers.
  """
  sparsity = masks_lib.validate_sparsity(sparsity, "sparsity.level")
  shapes = transform.layer_shapes(params, predicate)
  if not shapes:
    raise ValueError("no prunable parameters: the predicate selects none")
  dense = resolve_dense_layers(list(shapes), dense_layers, layer_order)
  if distribution == "uniform":
    return {n: int(np.prod(s)) if n in dense else masks_lib.num_kept(int(np.prod(s)), sparsity)
            for n, s in shapes.items()}
  if distribution == "erk":
    total = masks_lib.num_kept(sum(int(np.prod(s)) for s in shapes.values()), sparsity)
    return _exact_counts(shapes, erk_densities(shapes, sparsity, dense), total)
  raise ValueError(f"sparsity.distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")


def counts_tree(params: PyTree, counts: dict[str, int],
                predicate: transform.ParamPredicate = transform.weights_only) -> PyTree:
  """The params tree with each prunable leaf replaced by its keep count and every other
  leaf by -1 (never pruned): static ints zipped with params by ``jax.tree_util.tree_map``."""
  def count(path, x):
    module, name = transform.leaf_names(path)
    if not predicate(module, name, tuple(np.shape(x))):
      return -1
    return counts[module] if module in counts else counts[f"{module}/{name}"]
  return jax.tree_util.tree_map_with_path(count, params)


def layer_counts(params: PyTree, sparsity: float, distribution: str = "uniform",
                 dense_layers: str | Sequence[str] = "",
                 predicate: transform.ParamPredicate = transform.weights_only,
                 layer_order: Sequence[str] = ()) -> PyTree:
  """The params-shaped tree of keep counts a method takes: :func:`keep_counts` laid out by
  :func:`counts_tree` (e.g. ``pp.sparsity.rigl(layer_counts(params, 0.9, "erk"), end_step=...)``)."""
  return counts_tree(params, keep_counts(params, sparsity, distribution, dense_layers,
                                         predicate, layer_order), predicate)
