"""Model FLOPs and device utilisation: how much of the chips' peak a run uses.

``device_utilisation`` = (model FLOPs per step x steps per second) / (peak FLOP/s per device x
devices), the model-FLOPs utilisation (MFU) of PaLM's appendix B: the FLOPs of the model's
forward and backward pass on the whole global batch (``train.model_flops``), counted by
XLA's cost analysis rather than by hand, not what the optimizer or mask updates add. The peak
is the chip's dense bf16 figure from its data sheet.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

# Dense bf16 peak TFLOP/s per chip (vendor data sheets; no sparsity speed-up).
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "V100": 125.0,
                    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5p": 459.0, "L4": 121.0}


def peak_tflops(device_kind: str) -> float:
  """The bf16 dense peak of a known accelerator by its ``device_kind`` (0 when unknown, e.g.
  a CPU: then no utilisation is reported)."""
  for name, peak in BF16_PEAK_TFLOPS.items():
    if name.lower() in device_kind.lower():
      return peak
  return 0.0


def abstract(tree: Any) -> Any:
  """The tree's shapes and dtypes (``jax.ShapeDtypeStruct`` leaves): lowering from them
  touches no buffer and needs none of the other hosts' shards."""
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def step_flops(step_fn: Callable[..., Any], *args: Any) -> float:
  """FLOPs of one call of ``step_fn(*args)`` from XLA's cost analysis of its lowered (not
  compiled) program; 0 when the backend gives none. A ``lax.scan`` or loop inside counts its
  body once and a ``lax.cond`` counts its branches on every call."""
  try:
    cost = jax.jit(step_fn).lower(*abstract(args)).cost_analysis()
  except Exception:  # pylint: disable=broad-except  (cost analysis is backend-optional)
    return 0.0
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0))
