"""Config name -> sparsity method (``--config.sparsity.method``)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import ml_collections

from powerprop_jax.sparsity.base import SparsityMethod

PyTree = Any
# builder(sparsity_config, params, total_steps, alpha) -> SparsityMethod
# builder(config, params, total_steps, alpha, layer_order=()) -> SparsityMethod
Builder = Callable[..., SparsityMethod]

_BUILDERS: dict[str, Optional[Builder]] = {"none": None}


def register(name: str, builder: Builder) -> None:
  """Makes ``builder`` available as ``--config.sparsity.method=name``."""
  _BUILDERS[name] = builder


def methods() -> list[str]:
  return sorted(_BUILDERS)


def build_method(config: ml_collections.ConfigDict, params: PyTree, total_steps: int,
                 alpha: float, layer_order: Sequence[str] = ()) -> Optional[SparsityMethod]:
  """The method named by ``config.method`` (None for dense training).

  ``layer_order``: module names in creation order, for the "first"/"last" dense layers.
  """
  name = config.get("method", "none")
  if name not in _BUILDERS:
    raise ValueError(f"unknown sparsity.method {name!r}; known: {methods()}")
  builder = _BUILDERS[name]
  return None if builder is None else builder(config, params, total_steps, alpha, layer_order=layer_order)
