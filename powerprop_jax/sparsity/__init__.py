"""Sparsity methods as masks held in the optimizer state (see :mod:`.base`)."""

from powerprop_jax.sparsity.base import (MaskUpdate, SparseState, SparsityMethod,
                                         find_sparse_state, fixed_masks, forward_params,
                                         initial_params, masked_optimizer, sparse_optimizer)

__all__ = ["MaskUpdate", "SparseState", "SparsityMethod", "find_sparse_state", "fixed_masks",
           "forward_params", "initial_params", "masked_optimizer", "sparse_optimizer"]
