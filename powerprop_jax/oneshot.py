"""One-shot magnitude pruning curves (the paper's Figure 1, official protocol).

For each keep fraction p, every selected layer keeps its top p of |w| and the last selected
layer (the output layer) keeps min(1, m * p) (m = 2 in the official MNIST code); or, with
``scope="global"``, the top p of all selected weights together. No fine-tuning.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from powerprop_jax import masks as masks_lib
from powerprop_jax import transform

PyTree = Any


def default_prune_config() -> ml_collections.ConfigDict:
  """The ``prune`` fields of a prune-and-evaluate config (the official MNIST protocol's)."""
  return ml_collections.ConfigDict({
      "scope": "layerwise",             # layerwise | global
      "min_keep_fraction": 0.01,        # keep fractions geomspace(min_keep_fraction, 1, num)
      "num_keep_fractions": 20,
      "output_layer_multiplier": 2.0})  # output layer keeps min(1, 2p) (layerwise)


def keep_fractions(min_keep: float = 0.01, num: int = 20) -> np.ndarray:
  """geomspace(min_keep, 1, num): the fractions of weights kept."""
  if not 0.0 < min_keep <= 1.0 or num < 1:
    raise ValueError(f"need 0 < min_keep <= 1 and num >= 1, got {min_keep}, {num}")
  return np.geomspace(min_keep, 1.0, num)


def layer_names(params: PyTree, predicate: transform.ParamPredicate = transform.weights_only
                ) -> list[str]:
  """Module names of the selected leaves, in pytree order (the last is the output layer)."""
  names = []
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    module, name = transform._path_names(path)
    if predicate(module, name, tuple(np.shape(x))):
      names.append(module)
  return names


def oneshot_masks(weights: PyTree, keep: float, scope: str = "layerwise",
                  output_multiplier: float = 2.0,
                  predicate: transform.ParamPredicate = transform.weights_only) -> PyTree:
  """Masks keeping fraction ``keep`` of the selected weights (see the module docstring)."""
  if not 0.0 < keep <= 1.0:
    raise ValueError(f"keep fraction must be in (0, 1], got {keep}")
  if scope == "global":
    return masks_lib.magnitude_masks(weights, 1.0 - keep, "global", predicate)
  names = layer_names(weights, predicate)
  per_layer = {n: 1.0 - keep for n in names}
  per_layer[names[-1]] = 1.0 - min(1.0, output_multiplier * keep)
  return masks_lib.magnitude_masks(weights, per_layer, "layerwise", predicate)


def fraction_kept(masks: PyTree, predicate: transform.ParamPredicate = transform.weights_only
                  ) -> float:
  return 1.0 - masks_lib.sparsity_of(masks, predicate)


def pruning_curve(weights: PyTree, accuracy_fn: Callable[[PyTree], float],
                  fractions: np.ndarray, scope: str = "layerwise",
                  output_multiplier: float = 2.0,
                  predicate: transform.ParamPredicate = transform.weights_only,
                  ) -> list[dict[str, float]]:
  """[{"keep_fraction", "weights_remaining", "accuracy"}] for each keep fraction.

  ``accuracy_fn(masks)`` evaluates the model with the effective weights masked.
  ``weights_remaining`` is the realised fraction of selected weights kept (it exceeds
  ``keep_fraction`` under the layerwise rule because the output layer keeps more).
  """
  rows = []
  for keep in fractions:
    masks = oneshot_masks(weights, float(keep), scope, output_multiplier, predicate)
    rows.append({"keep_fraction": float(keep),
                 "weights_remaining": fraction_kept(jax.device_get(masks), predicate),
                 "accuracy": float(accuracy_fn(masks))})
  return rows
