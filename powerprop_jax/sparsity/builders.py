"""Config -> method: ``build_method(config.sparsity, ...)`` and the registry it reads.

The fields of ``config.sparsity`` and their defaults are in :func:`powerprop_jax.experiment.config.base`:
  method: none | oneshot | gradual | topkast | rigl | set
  level: final (forward) sparsity in [0, 1); distribution: uniform | erk;
  dense_layers: comma list of prunable module names kept dense ("first", "last" allowed);
  begin_step, end_step, update_every: the mask-update window (end_step 0 = 75% of training
    for rigl/set, as in RigL; = total steps for topkast; = 50% for gradual);
  backward_level (topkast): backward sparsity <= level (< 0: the paper's 2 * level - 1);
  penalty (topkast): lambda; drop_fraction, grow_init, grow_epsilon, seed (rigl/set);
  structure (oneshot, gradual, rigl, set): "N:M" keeps exactly N of every M weights along
    each pruned kernel's input axis (:mod:`powerprop_jax.structured`; level must be 1 - N/M;
    rigl/set drop and grow within each group), "" = none.
:func:`check_config` refuses a bad field or combination before any data is loaded (it needs
no params); the builders check again what only the params can tell (a level that empties a
layer, an unknown dense layer).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax

from powerprop_jax import checks
from powerprop_jax import masks as masks_lib
from powerprop_jax import structured, transform
from powerprop_jax.sparsity import distributions, magnitude, rigl, topkast
from powerprop_jax.sparsity.base import SparsityMethod

PyTree = Any


def _counts(config, params, level, layer_order=()) -> PyTree:
  """Per-layer keep counts as a params-shaped tree; refuses a level that empties a layer."""
  try:
    counts = distributions.keep_counts(params, level, config.distribution, config.dense_layers,
                                       layer_order=layer_order)
  except ValueError as e:   # an unknown dense layer, ...: a bad field of this section
    raise checks.ConfigError(str(e)) from None
  empty = [layer for layer, n in counts.items() if n == 0]
  if empty:
    raise checks.ConfigError(f"sparsity.level={level} leaves no weight in layer(s) {empty} "
                     f"({config.distribution} distribution); lower sparsity.level")
  return distributions.counts_tree(params, counts)


def _window(config, total_steps: int, default_end_fraction: float) -> tuple[int, int, int]:
  begin = int(config.begin_step)
  end = int(config.end_step) or int(default_end_fraction * total_steps)
  every = int(config.update_every)
  if every <= 0:
    raise checks.ConfigError(f"sparsity.update_every must be > 0, got {every}")
  if end > total_steps:
    raise checks.ConfigError(f"sparsity.end_step={end} is past the end of training "
                     f"(train.steps={total_steps})")
  if not 0 <= begin <= end:
    raise checks.ConfigError(f"need 0 <= sparsity.begin_step <= sparsity.end_step, got {begin}, {end}")
  return begin, end, every


def _level(config, method: str) -> float:
  level = masks_lib.validate_sparsity(config.level, "sparsity.level")
  if level == 0.0:
    raise checks.ConfigError(f"sparsity.method={method} needs sparsity.level in (0, 1), got 0")
  return level


# Top-KAST's published forward -> backward sparsities (ResNet-50 on ImageNet).
TOPKAST_BACKWARD = {0.8: 0.5, 0.9: 0.8, 0.95: 0.9}


def topkast_backward_level(level: float) -> float:
  """The paper's backward sparsity for a forward sparsity (80 -> 50, 90 -> 80, 95 -> 90 %);
  other levels use 2 * level - 1 (which gives the 90 and 95 pairs; clipped at 0)."""
  return TOPKAST_BACKWARD.get(round(level, 6), max(0.0, round(2.0 * level - 1.0, 10)))


def _structured_counts(config, params, level, layer_order=()) -> PyTree:
  """Keep counts; under ``sparsity.structure`` the ``dense_layers`` get -1 (never pruned:
  an N:M method prunes every leaf with a count >= 0) and every other pruned layer must fit
  N:M groups."""
  counts = _counts(config, params, level, layer_order)
  nm = structured.parse_structure(config.structure)
  if nm is not None:
    layers = list(transform.layer_shapes(params))
    dense = distributions.resolve_dense_layers(layers, config.dense_layers, layer_order)
    pruned = distributions.counts_tree(params, {l: int(l not in dense) for l in layers})
    counts = jax.tree_util.tree_map(lambda k, p: k if p > 0 else -1, counts, pruned)
    try:
      structured.check_nm_layers(params, counts, nm[1])
    except ValueError as e:
      raise checks.ConfigError(f"sparsity.structure={config.structure}: {e}, or list "
                               f"its module in sparsity.dense_layers") from None
  return counts


def build_oneshot(config, params, total_steps, alpha, layer_order=()) -> SparsityMethod:
  del alpha
  begin = int(config.begin_step)
  if not 0 <= begin <= total_steps:
    raise checks.ConfigError(f"sparsity.begin_step must be in [0, {total_steps}], got {begin}")
  level = _level(config, "oneshot")
  return magnitude.oneshot_pruning(_structured_counts(config, params, level, layer_order),
                                   begin, structure=config.structure)


def build_gradual(config, params, total_steps, alpha, layer_order=()) -> SparsityMethod:
  del alpha
  level = _level(config, "gradual")
  begin, end, every = _window(config, total_steps, 0.5)
  return magnitude.gradual_pruning(_structured_counts(config, params, level, layer_order),
                                   begin, end, every, structure=config.structure)


def build_topkast(config, params, total_steps, alpha, layer_order=()) -> SparsityMethod:
  del alpha
  level = _level(config, "topkast")
  backward = float(config.backward_level)
  if backward < 0:
    backward = topkast_backward_level(level)
  backward = masks_lib.validate_sparsity(backward, "sparsity.backward_level")
  if backward > level:
    raise checks.ConfigError(f"sparsity.backward_level={backward} must be <= sparsity.level={level} "
                     "(the backward set contains the forward set)")
  _, end, every = _window(config, total_steps, 1.0)
  penalty = float(config.penalty)
  if penalty < 0:
    raise checks.ConfigError(f"sparsity.penalty must be >= 0, got {penalty}")
  return topkast.top_kast(_counts(config, params, level, layer_order),
                          _counts(config, params, backward, layer_order),
                          penalty, every, end)


def weight_decay_mask(config: Any, params: PyTree, layer_order=()
                      ) -> Optional[PyTree]:
  """Where ``optimizer.weight_decay`` applies, as a params-shaped tree of bools (None: on
  every parameter).

  Under Top-KAST the exploration penalty *is* the weight decay of the layers it holds a
  keep count for (lambda on A, lambda / D on B \\ A, none elsewhere; PAPER.md, Top-KAST), so
  weight decay is kept only on the parameters it never masks (biases, batch norm); decaying
  both would apply 2 lambda on A. A layer in ``dense_layers`` has A = every weight, so its
  penalty lambda * v is exactly its weight decay. Every other method decays every parameter.
  """
  if config.method != "topkast":
    return None
  counts = _counts(config, params, _level(config, "topkast"), layer_order)
  return jax.tree_util.tree_map(lambda k: bool(k < 0), counts)


def _build_drop_grow(config, params, total_steps, alpha, grow: str, layer_order=()
                     ) -> SparsityMethod:
  name = "rigl" if grow == "gradient" else "set"
  level = _level(config, name)
  _, end, every = _window(config, total_steps, 0.75)
  fraction = float(config.drop_fraction)
  if not 0.0 < fraction <= 1.0:
    raise checks.ConfigError(f"sparsity.drop_fraction must be in (0, 1], got {fraction}")
  return rigl.drop_and_grow(_structured_counts(config, params, level, layer_order), fraction,
                            every, end, grow, config.grow_init, alpha,
                            float(config.grow_epsilon), int(config.seed),
                            structure=config.structure)


def build_rigl(config, params, total_steps, alpha, layer_order=()) -> SparsityMethod:
  return _build_drop_grow(config, params, total_steps, alpha, "gradient", layer_order)


def build_set(config, params, total_steps, alpha, layer_order=()) -> SparsityMethod:
  return _build_drop_grow(config, params, total_steps, alpha, "random", layer_order)


# builder(sparsity_config, params, total_steps, alpha, layer_order=()) -> SparsityMethod
Builder = Callable[..., SparsityMethod]

METHODS: dict[str, Optional[Builder]] = {
    "none": None,
    "oneshot": build_oneshot,
    "gradual": build_gradual,
    "topkast": build_topkast,
    "rigl": build_rigl,
    "set": build_set,
}


DISTRIBUTIONS = ("uniform", "erk")
# the methods sparsity.structure="N:M" applies to
STRUCTURED_METHODS = ("oneshot", "gradual", "rigl", "set")
# Where the mask-update window ends when ``end_step`` is 0, as a fraction of training.
DEFAULT_END_FRACTION = {"oneshot": 0.0, "gradual": 0.5, "topkast": 1.0, "rigl": 0.75, "set": 0.75}


def check_config(config: Any, total_steps: int) -> None:
  """Checks every field of a ``sparsity`` section that :func:`build_method` reads, for a run
  of ``total_steps`` steps; raises :class:`~powerprop_jax.checks.ConfigError` (one line)."""
  method = checks.choice(config.method, "sparsity.method", sorted(METHODS))
  try:
    level = masks_lib.validate_sparsity(config.level, "sparsity.level")
  except ValueError as e:
    raise checks.ConfigError(str(e)) from None
  checks.choice(config.distribution, "sparsity.distribution", DISTRIBUTIONS)
  checks.integer(config.seed, "sparsity.seed")
  try:
    nm = structured.parse_structure(config.structure)
  except ValueError as e:
    raise checks.ConfigError(f"sparsity.structure: {e}") from None
  if nm is not None and method not in STRUCTURED_METHODS:
    raise checks.ConfigError(f"sparsity.structure={config.structure} needs sparsity.method in "
                             f"{list(STRUCTURED_METHODS)}, got {method!r}")
  if nm is not None and abs(level - (1 - nm[0] / nm[1])) > 1e-9:
    raise checks.ConfigError(f"sparsity.structure={config.structure} keeps {nm[0]} of every "
                             f"{nm[1]} weights: set sparsity.level={1 - nm[0] / nm[1]:g}, "
                             f"got {level:g}")
  if method == "none":
    return
  try:
    _level(config, method)
    if method == "oneshot":
      begin = checks.integer(config.begin_step, "sparsity.begin_step")
      if begin > total_steps:
        raise checks.ConfigError(f"sparsity.begin_step must be in [0, {total_steps}], got {begin}")
    else:
      checks.integer(config.begin_step, "sparsity.begin_step")
      checks.integer(config.end_step, "sparsity.end_step")
      _window(config, total_steps, DEFAULT_END_FRACTION[method])
    if method == "topkast":
      backward = float(config.backward_level)
      backward = topkast_backward_level(level) if backward < 0 else backward
      masks_lib.validate_sparsity(backward, "sparsity.backward_level")
      if backward > level:
        raise checks.ConfigError(f"sparsity.backward_level={backward} must be <= sparsity.level="
                         f"{level} (the backward set contains the forward set)")
      checks.positive(config.penalty, "sparsity.penalty", allow_zero=True)
    if method in ("rigl", "set"):
      checks.fraction(config.drop_fraction, "sparsity.drop_fraction", 0.0, 1.0,
                      closed_low=False, closed_high=True)
      checks.choice(config.grow_init, "sparsity.grow_init", rigl.GROW_INITS)
      checks.positive(config.grow_epsilon, "sparsity.grow_epsilon")
  except checks.ConfigError:
    raise
  except ValueError as e:
    raise checks.ConfigError(str(e)) from None


def check_layers(config: Any, params: PyTree, layer_order: Sequence[str] = ()) -> None:
  """Checks what only the model's layers can tell, from their shapes alone (``params`` may be
  ``jax.ShapeDtypeStruct`` leaves): ``dense_layers`` names real layers, the level leaves every
  layer a weight, N:M groups fit. Raises :class:`~powerprop_jax.checks.ConfigError`."""
  if config.method == "none":
    return
  _structured_counts(config, params, _level(config, config.method), layer_order)


def build_method(config: Any, params: PyTree, total_steps: int,
                 alpha: float, layer_order: Sequence[str] = ()) -> Optional[SparsityMethod]:
  """The method named by ``config.method`` (None for dense training).

  ``layer_order``: module names in creation order, for the "first"/"last" dense layers.
  """
  if config.method not in METHODS:
    raise checks.ConfigError(f"unknown sparsity.method {config.method!r}; known: {sorted(METHODS)}")
  builder = METHODS[config.method]
  return None if builder is None else builder(config, params, total_steps, alpha,
                                              layer_order=layer_order)
