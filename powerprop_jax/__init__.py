"""powerprop_jax: Powerpropagation (Schwarz et al., NeurIPS 2021) and sparse training in JAX.

    import powerprop_jax as pp
    w = pp.powerprop(v, alpha)                 # v * |v|**(alpha-1)
    with pp.haiku.powerprop(alpha=4.0): ...    # reparameterise any Haiku model
    tx = pp.powerprop_optimizer(optax.sgd(0.1), alpha=4.0)   # any model (Flax, Haiku, JAX)

The core needs only jax, optax and numpy: ``pp.haiku`` imports Haiku when first used. The
experiment harness (config, training driver, data, models, checkpoints, scripts' plumbing) is
:mod:`powerprop_jax.experiment`; it imports the library, never the other way round.
"""

import importlib
from typing import Any
import warnings

from powerprop_jax import sparsity
from powerprop_jax.masks import (apply_masks, check_masks, keep_fractions, magnitude_masks,
                                 num_kept, sparsity_of, top_k_mask, validate_sparsity)
from powerprop_jax.optim import powerprop_optimizer
from powerprop_jax.sparsity import masked_optimizer, sparse_optimizer
from powerprop_jax.transform import (Reparam, effective_params, inverse_powerprop,
                                     layer_shapes, leaf_names, map_selected, powerprop,
                                     powerprop_derivative, reparameterise_init, selected,
                                     selected_leaves, validate_alpha, weights_only)

__version__ = "0.3.0"

__all__ = [
    "Reparam", "apply_masks", "check_masks", "effective_params", "haiku", "inverse_powerprop",
    "keep_fractions", "layer_shapes", "leaf_names", "magnitude_masks", "map_selected",
    "masked_optimizer", "num_kept", "powerprop", "powerprop_derivative", "powerprop_optimizer",
    "reparameterise_init", "selected", "selected_leaves", "sparse_optimizer", "sparsity",
    "sparsity_of", "top_k_mask", "validate_alpha", "validate_sparsity", "weights_only",
]


# Harness modules that lived beside the library before version 0.3.
_MOVED = ("checkpoint", "cli", "config", "data", "metrics", "models", "parallel", "reproduce",
          "results", "sweep", "train", "workdir")


def __getattr__(name: str) -> Any:
  if name == "haiku":  # Haiku is optional for the core: load it on first use
    return importlib.import_module("powerprop_jax.haiku")
  if name in _MOVED:
    warnings.warn(f"powerprop_jax.{name} moved to powerprop_jax.experiment.{name} in version "
                  "0.3; import it from there", DeprecationWarning, stacklevel=2)
    return importlib.import_module(f"powerprop_jax.experiment.{name}")
  raise AttributeError(f"module 'powerprop_jax' has no attribute {name!r}")
