"""Config name -> sparsity method (``--config.sparsity.method``)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import ml_collections

from powerprop_jax.sparsity.base import SparsityMethod

PyTree = Any
# builder(sparsity_config, params, total_steps, alpha) -> SparsityMethod
Builder = Callable[[ml_collections.ConfigDict, PyTree, int, float], SparsityMethod]

_BUILDERS: dict[str, Optional[Builder]] = {"none": None}


def register(name: str, builder: Builder) -> None:
  """Makes ``builder`` available as ``--config.sparsity.method=name``."""
  _BUILDERS[name] = builder


def methods() -> list[str]:
  return sorted(_BUILDERS)


def build_method(config: ml_collections.ConfigDict, params: PyTree, total_steps: int,
                 alpha: float) -> Optional[SparsityMethod]:
  """The method named by ``config.method`` (None for dense training)."""
  name = config.get("method", "none")
  if name not in _BUILDERS:
    raise ValueError(f"unknown sparsity.method {name!r}; known: {methods()}")
  builder = _BUILDERS[name]
  return None if builder is None else builder(config, params, total_steps, alpha)
