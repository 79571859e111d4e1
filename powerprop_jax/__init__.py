"""powerprop_jax: Powerpropagation (Schwarz et al., NeurIPS 2021) and sparse training in JAX.

    import powerprop_jax as pp
    w = pp.powerprop(v, alpha)                 # v * |v|**(alpha-1)
    with pp.haiku.powerprop(alpha=4.0): ...    # reparameterise any Haiku model
    tx = pp.powerprop_optimizer(optax.sgd(0.1), alpha=4.0)   # or keep the model, wrap optax
"""

from powerprop_jax import haiku
from powerprop_jax import sparsity
from powerprop_jax.masks import (apply_masks, check_masks, magnitude_masks, num_kept,
                                 sparsity_of, top_k_mask, validate_sparsity)
from powerprop_jax.optim import powerprop_optimizer
from powerprop_jax.sparsity import masked_optimizer, sparse_optimizer
from powerprop_jax.transform import (effective_params, inverse_powerprop, map_selected,
                                     powerprop, powerprop_derivative, reparameterise_init,
                                     selected, validate_alpha, weights_only)

__version__ = "0.1.0"

__all__ = [
    "apply_masks", "check_masks", "effective_params", "haiku", "inverse_powerprop",
    "magnitude_masks", "map_selected", "masked_optimizer", "num_kept", "powerprop",
    "powerprop_derivative", "powerprop_optimizer", "reparameterise_init", "selected",
    "sparse_optimizer", "sparsity", "sparsity_of", "top_k_mask", "validate_alpha",
    "validate_sparsity", "weights_only",
]
