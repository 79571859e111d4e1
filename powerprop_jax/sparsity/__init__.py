"""Sparsity methods as masks held in the optimizer state (see :mod:`.base`).

``--config.sparsity.method`` = none | oneshot | gradual | topkast | rigl | set.
"""

from powerprop_jax.sparsity import builders  # registers the methods  # noqa: F401
from powerprop_jax.sparsity import distributions, schedules
from powerprop_jax.sparsity.base import (MaskUpdate, SparseState, SparsityMethod,
                                         find_sparse_state, fixed_masks, forward_params,
                                         initial_params, masked_optimizer, sparse_optimizer)
from powerprop_jax.sparsity.magnitude import gradual_pruning, oneshot_pruning
from powerprop_jax.sparsity.registry import build_method, methods, register
from powerprop_jax.sparsity.rigl import drop_and_grow, rigl, set_method
from powerprop_jax.sparsity.topkast import top_kast

__all__ = ["MaskUpdate", "SparseState", "SparsityMethod", "build_method", "distributions",
           "drop_and_grow", "find_sparse_state", "fixed_masks", "forward_params",
           "gradual_pruning", "initial_params", "masked_optimizer", "methods",
           "oneshot_pruning", "register", "rigl", "schedules", "set_method",
           "sparse_optimizer", "top_kast"]
