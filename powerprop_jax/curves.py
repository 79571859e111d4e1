"""Post-training pruning curves (the paper's Figure 1, official protocol).

For each keep fraction p, every selected layer keeps its top p of |w| and the output layer
(the last one the model creates) keeps min(1, m * p) (m = 2 in the official MNIST code); or,
with ``scope="global"``, the top p of all selected weights together. No fine-tuning. (The
training-time method that prunes once is ``sparsity.method="oneshot"``, a different thing.)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np

from powerprop_jax import masks as masks_lib
from powerprop_jax import transform

PyTree = Any
SCOPES = ("layerwise", "global")


def curve_masks(weights: PyTree, keep: float, scope: str = "layerwise",
                output_multiplier: float = 2.0,
                predicate: transform.ParamPredicate = transform.weights_only,
                layer_order: Sequence[str] = ()) -> PyTree:
  """Masks keeping fraction ``keep`` of the selected weights (see the module docstring).

  ``layer_order``: module names in creation order (``models.creation_order`` for the
  library's models); the last is the output layer. Without it, pytree order is used.
  """
  if not 0.0 < keep <= 1.0:
    raise ValueError(f"keep fraction must be in (0, 1], got {keep}")
  if scope not in SCOPES:
    raise ValueError(f"prune.scope must be one of {SCOPES}, got {scope!r}")
  if scope == "global":
    return masks_lib.magnitude_masks(weights, 1.0 - keep, "global", predicate)
  layers = transform.order_layers(list(transform.layer_shapes(weights, predicate)),
                                  layer_order)
  per_layer = {n: 1.0 - keep for n in layers}
  per_layer[layers[-1]] = 1.0 - min(1.0, output_multiplier * keep)
  return masks_lib.magnitude_masks(weights, per_layer, "layerwise", predicate)


def pruning_curve(weights: PyTree, accuracy_fn: Callable[[PyTree], float],
                  fractions: np.ndarray, scope: str = "layerwise",
                  output_multiplier: float = 2.0,
                  predicate: transform.ParamPredicate = transform.weights_only,
                  layer_order: Sequence[str] = ()) -> list[dict[str, float]]:
  """[{"keep_fraction", "weights_remaining", "accuracy"}] for each keep fraction.

  ``accuracy_fn(masks)`` evaluates the model with the effective weights masked.
  ``weights_remaining`` is the realised fraction of selected weights kept (it exceeds
  ``keep_fraction`` under the layerwise rule because the output layer keeps more).
  """
  rows = []
  for keep in fractions:
    masks = curve_masks(weights, float(keep), scope, output_multiplier, predicate, layer_order)
    rows.append({"keep_fraction": float(keep),
                 "weights_remaining": 1.0 - masks_lib.sparsity_of(jax.device_get(masks),
                                                                  predicate),
                 "accuracy": float(accuracy_fn(masks))})
  return rows
