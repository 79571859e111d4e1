"""Sparsity methods as masks held in the optimizer state (see :mod:`.base`).

``--config.sparsity.method`` = none | oneshot | gradual | topkast | rigl | set.
"""

from powerprop_jax.sparsity import builders, distributions, schedules
from powerprop_jax.sparsity.distributions import layer_counts
from powerprop_jax.sparsity.base import (MaskUpdate, SparseState, SparsityMethod,
                                         find_sparse_state, fixed_masks, forward_params,
                                         masked_optimizer, sparse_optimizer)
from powerprop_jax.sparsity.magnitude import gradual_pruning, oneshot_pruning
from powerprop_jax.sparsity.builders import METHODS, build_method
from powerprop_jax.sparsity.rigl import drop_and_grow, rigl, set_method
from powerprop_jax.sparsity.topkast import top_kast

__all__ = ["METHODS", "MaskUpdate", "SparseState", "SparsityMethod", "build_method",
           "builders", "distributions",
           "drop_and_grow", "find_sparse_state", "fixed_masks", "forward_params",
           "gradual_pruning", "layer_counts", "masked_optimizer",
           "oneshot_pruning", "rigl", "schedules", "set_method",
           "sparse_optimizer", "top_kast"]
