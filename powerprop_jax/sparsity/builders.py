"""Config -> method: the builders behind ``--config.sparsity.method``.

Fields of ``config.sparsity`` (missing ones take the defaults below):
  method: none | oneshot | gradual | topkast | rigl | set
  level: final (forward) sparsity in [0, 1); distribution: uniform | erk;
  dense_layers: comma list of prunable module names kept dense ("first", "last" allowed);
  begin_step, end_step, update_every: the mask-update window (end_step 0 = 75% of training
    for rigl/set, as in RigL; = total steps for topkast; = 50% for gradual);
  backward_level (topkast): backward sparsity <= level; penalty (topkast): lambda;
  drop_fraction, grow_init, grow_epsilon, seed (rigl/set).
Bad combinations raise ValueError before training starts.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from powerprop_jax import masks as masks_lib
from powerprop_jax.sparsity import distributions, magnitude, registry, rigl, topkast
from powerprop_jax.sparsity.base import SparsityMethod

PyTree = Any


def _counts(config, params, level, layer_order=()) -> PyTree:
  counts = distributions.keep_counts(params, level, config.get("distribution", "uniform"),
                                     config.get("dense_layers", ""), layer_order=layer_order)
  return distributions.counts_tree(params, counts)


def _window(config, total_steps: int, default_end_fraction: float) -> tuple[int, int, int]:
  begin = int(config.get("begin_step", 0))
  end = int(config.get("end_step", 0)) or int(default_end_fraction * total_steps)
  every = int(config.get("update_every", 100))
  if every <= 0:
    raise ValueError(f"sparsity.update_every must be > 0, got {every}")
  if end > total_steps:
    raise ValueError(f"sparsity.end_step={end} is past the end of training "
                     f"(train.steps={total_steps})")
  if not 0 <= begin <= end:
    raise ValueError(f"need 0 <= sparsity.begin_step <= sparsity.end_step, got {begin}, {end}")
  return begin, end, every


def _level(config, method: str) -> float:
  level = masks_lib.validate_sparsity(config.get("level", 0.0), "sparsity.level")
  if level == 0.0:
    raise ValueError(f"sparsity.method={method} needs sparsity.level in (0, 1), got 0")
  return level


def build_oneshot(config, params, total_steps, alpha, layer_order=()) -> SparsityMethod:
  del alpha
  begin = int(config.get("begin_step", 0))
  if not 0 <= begin <= total_steps:
    raise ValueError(f"sparsity.begin_step must be in [0, {total_steps}], got {begin}")
  level = _level(config, "oneshot")
  return magnitude.oneshot_pruning(_counts(config, params, level, layer_order), begin)


def build_gradual(config, params, total_steps, alpha, layer_order=()) -> SparsityMethod:
  del alpha
  level = _level(config, "gradual")
  begin, end, every = _window(config, total_steps, 0.5)
  return magnitude.gradual_pruning(_counts(config, params, level, layer_order), begin, end,
                                   every)


def build_topkast(config, params, total_steps, alpha, layer_order=()) -> SparsityMethod:
  del alpha
  level = _level(config, "topkast")
  backward = masks_lib.validate_sparsity(config.get("backward_level", 0.0),
                                         "sparsity.backward_level")
  if backward > level:
    raise ValueError(f"sparsity.backward_level={backward} must be <= sparsity.level={level} "
                     "(the backward set contains the forward set)")
  _, end, every = _window(config, total_steps, 1.0)
  penalty = float(config.get("penalty", 1e-4))
  if penalty < 0:
    raise ValueError(f"sparsity.penalty must be >= 0, got {penalty}")
  return topkast.top_kast(_counts(config, params, level, layer_order),
                          _counts(config, params, backward, layer_order),
                          penalty, every, end)


def _build_drop_grow(config, params, total_steps, alpha, grow: str, layer_order=()
                     ) -> SparsityMethod:
  name = "rigl" if grow == "gradient" else "set"
  level = _level(config, name)
  _, end, every = _window(config, total_steps, 0.75)
  fraction = float(config.get("drop_fraction", 0.3))
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"sparsity.drop_fraction must be in (0, 1], got {fraction}")
  grow_init = config.get("grow_init", "auto")
  if grow_init == "auto":
    grow_init = "zero" if alpha == 1.0 else "min_active"
  return rigl.drop_and_grow(_counts(config, params, level, layer_order), fraction, every, end,
                            grow,
                            grow_init, alpha, float(config.get("grow_epsilon", 1e-3)),
                            int(config.get("seed", 0)))


def build_rigl(config, params, total_steps, alpha, layer_order=()) -> SparsityMethod:
  return _build_drop_grow(config, params, total_steps, alpha, "gradient", layer_order)


def build_set(config, params, total_steps, alpha, layer_order=()) -> SparsityMethod:
  return _build_drop_grow(config, params, total_steps, alpha, "random", layer_order)


def default_config(method: str = "none") -> ml_collections.ConfigDict:
  """Every sparsity field with its default, for config files to start from."""
  return ml_collections.ConfigDict({
      "method": method, "level": 0.0, "distribution": "uniform", "dense_layers": "",
      "begin_step": 0, "end_step": 0, "update_every": 100, "backward_level": 0.0,
      "penalty": 1e-4, "drop_fraction": 0.3, "grow_init": "auto", "grow_epsilon": 1e-3,
      "seed": 0})


for _name, _builder in [("oneshot", build_oneshot), ("gradual", build_gradual),
                        ("topkast", build_topkast), ("rigl", build_rigl), ("set", build_set)]:
  registry.register(_name, _builder)
