"""Post-training pruning curves (the paper's Figure 1, official protocol).

For each keep fraction p, every selected layer keeps its top p of |w| and the output layer
(the last one the model creates) keeps min(1, m * p) (m = 2 in the official MNIST code); or,
with ``scope="global"``, the top p of all selected weights together. No fine-tuning. (The
training-time method that prunes once is ``sparsity.method="oneshot"``, a different thing.)

:func:`nm_pruning_curve` evaluates the same weights at N:M structures instead (keep N of
every M along each kernel's input axis, :mod:`powerprop_jax.structured`): one point per
structure, every selected layer at keep fraction N/M.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np

from powerprop_jax import masks as masks_lib
from powerprop_jax import structured
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


def nm_pruning_curve(weights: PyTree, accuracy_fn: Callable[[PyTree], float],
                     structures: Sequence[str] = ("1:2", "2:4", "1:4", "1:8"),
                     predicate: transform.ParamPredicate = transform.weights_only
                     ) -> list[dict[str, float | str]]:
  """[{"structure", "keep_fraction", "weights_remaining", "accuracy"}] per N:M structure.

  ``accuracy_fn(masks)`` as in :func:`pruning_curve`, with ``structured.nm_masks`` masks;
  keep_fraction is N/M. Every selected layer's axis -2 must be divisible by M (ValueError
  naming the layer otherwise): leave a layer dense, e.g. a first conv on 3 channels, by
  excluding it with ``predicate``.
  """
  rows = []
  for text in structures:
    n, m = structured.parse_structure(text) or (None, None)
    if n is None:
      raise ValueError(f"nm_pruning_curve needs 'N:M' structures, got {text!r}")
    masks = structured.nm_masks(weights, n, m, predicate)
    rows.append({"structure": f"{n}:{m}", "keep_fraction": n / m,
                 "weights_remaining": 1.0 - masks_lib.sparsity_of(jax.device_get(masks),
                                                                  predicate),
                 "accuracy": float(accuracy_fn(masks))})
  return rows


def parse_structures(text: str) -> list[tuple[int, int]]:
  """``"2:4,1:8"`` -> [(2, 4), (1, 8)] (``""`` -> [])."""
  return [structured.parse_structure(s) for s in text.split(",") if s.strip()]


def nm_versus_unstructured(weights: PyTree, accuracy_fn: Callable[[PyTree], float],
                           structures: Sequence[tuple[int, int]],
                           predicate: transform.ParamPredicate = transform.weights_only
                           ) -> list[dict[str, Any]]:
  """For each (N, M): the weights pruned to N:M, and the same layers pruned without structure
  (each to its top N/M by |w|), so the two differ only in the pattern.

  A selected layer whose input axis (axis -2) is not divisible by M stays dense in both
  (listed in ``dense_layers``). Rows: {"structure", "pattern" ("N:M" | "unstructured"),
  "keep_fraction" (N/M), "weights_remaining" (realised, over every selected weight),
  "dense_layers", "accuracy"}.
  """
  rows = []
  shapes = transform.layer_shapes(weights, predicate)
  for n, m in structures:
    dense = sorted(name for name, shape in shapes.items() if shape[-2] % m)
    if len(dense) == len(shapes):
      raise ValueError(f"no layer's input axis is divisible by {m}: {n}:{m} prunes nothing")

    def pruned(module: str, name: str, shape: tuple[int, ...], m: int = m) -> bool:
      return predicate(module, name, shape) and shape[-2] % m == 0

    for pattern, masks in (
        (f"{n}:{m}", structured.nm_masks(weights, n, m, pruned)),
        ("unstructured", masks_lib.magnitude_masks(weights, 1.0 - n / m, "layerwise",
                                                   pruned))):
      rows.append({"structure": f"{n}:{m}", "pattern": pattern, "keep_fraction": n / m,
                   "weights_remaining": 1.0 - masks_lib.sparsity_of(jax.device_get(masks),
                                                                    predicate),
                   "dense_layers": ",".join(dense), "accuracy": float(accuracy_fn(masks))})
  return rows


def check_config(config: Any) -> None:
  """Checks a ``prune`` section (the pruning curves' scope, keep-fraction grid and output-layer
  multiplier); one line naming the bad field."""
  from powerprop_jax import checks  # pylint: disable=g-import-not-at-top
  checks.choice(config.scope, "prune.scope", SCOPES)
  checks.fraction(config.min_keep_fraction, "prune.min_keep_fraction", 0.0, 1.0,
                  closed_low=False, closed_high=True)
  checks.integer(config.num_keep_fractions, "prune.num_keep_fractions", 1)
  if not float(config.output_layer_multiplier) >= 1.0:
    raise checks.ConfigError(f"prune.output_layer_multiplier must be >= 1, got "
                             f"{config.output_layer_multiplier!r}")
  try:
    parse_structures(config.structures)
  except ValueError as e:
    raise checks.ConfigError(f"prune.structures: {e}") from None
