"""The one base config: every field any experiment, script or the loop reads, with its default.

Experiment files in ``configs/`` start from :func:`base` and override what differs (as
Flax's ImageNet example does), so each default lives here and nowhere else: the library
reads ``config.section.field`` directly and never supplies a fallback of its own.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Any, Optional, Sequence

import ml_collections

DATA_SETS = ("mnist", "cifar10", "imagenet2012")


def base() -> ml_collections.ConfigDict:
  """A ConfigDict holding every field with its default (MNIST LeNet-300-100, dense, SGD 0.1)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.alpha = 1.0                       # Powerpropagation power (1 = the plain network)

  c.data = ml_collections.ConfigDict()
  c.data.name = "mnist"               # mnist | cifar10 | imagenet2012
  c.data.source = "auto"              # mnist: auto | idx | tfds; cifar10: npz | tfds
  c.data.dir = ""                     # IDX / npz directory, or tfds data_dir ("" = default)
  c.data.file = "cifar10_jpeg_subset.npz"   # cifar10 npz file name inside data.dir
  c.data.num_validation = 5000        # training examples held out for validation
  c.data.image_size = 224             # imagenet2012: train crop / eval crop side
  c.data.workers = 0                  # imagenet2012: grain worker processes (0 = in-process)
  c.data.prefetch = 2                 # imagenet2012: batches prefetched per worker

  c.model = ml_collections.ConfigDict()
  c.model.name = "lenet_300_100"      # lenet_300_100 | cifar_convnet | resnet50 | resnet_tiny
  c.model.num_classes = 10
  c.model.width = 1.0                 # cifar_convnet channel multiplier
  c.model.compute_dtype = "float32"   # float32 | bfloat16 (params and transform stay float32)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 50_000
  c.train.batch_size = 60             # global batch, over all devices of all hosts
  c.train.eval_batch_size = 10_000    # streamed evaluation batch (global)
  c.train.chunk_steps = 1000          # steps per jitted lax.scan call
  c.train.unroll = False              # unroll the scan (XLA:CPU runs loop-body convs slowly)
  c.train.num_devices = 0             # data-parallel devices (0 = all)
  c.train.distributed = False         # call jax.distributed.initialize() first (multi-host)
  c.train.log_every = 10_000
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 10_000
  c.train.augment = "none"            # none | crop_flip (on device)
  c.train.label_smoothing = 0.0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"            # sgd | adam
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.0
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"   # constant | cosine | piecewise
  c.optimizer.warmup_steps = 0
  c.optimizer.boundaries = ()         # piecewise: fractions of training where lr *= decay
  c.optimizer.decay_factor = 0.1

  c.sparsity = ml_collections.ConfigDict()
  c.sparsity.method = "none"          # none | oneshot | gradual | topkast | rigl | set
  c.sparsity.level = 0.0              # final (forward) sparsity in [0, 1)
  c.sparsity.distribution = "uniform"  # uniform | erk
  c.sparsity.dense_layers = ""        # comma list of module names; "first"/"last" allowed
  c.sparsity.begin_step = 0
  c.sparsity.end_step = 0             # 0: 75% of training (rigl/set), all (topkast), 50% (gradual)
  c.sparsity.update_every = 100
  c.sparsity.backward_level = -1.0    # topkast backward sparsity; < 0: the paper's pairing
  c.sparsity.penalty = 1e-4           # topkast exploration penalty lambda
  c.sparsity.drop_fraction = 0.3      # rigl/set initial drop fraction (cosine decayed)
  c.sparsity.grow_init = "auto"       # rigl/set: auto | zero | min_active | w_epsilon
  c.sparsity.grow_epsilon = 1e-3
  c.sparsity.seed = 0

  c.prune = ml_collections.ConfigDict()   # post-training one-shot pruning curves
  c.prune.scope = "layerwise"         # layerwise | global
  c.prune.min_keep_fraction = 0.01    # keep fractions geomspace(min_keep_fraction, 1, num)
  c.prune.num_keep_fractions = 20
  c.prune.output_layer_multiplier = 2.0   # output layer keeps min(1, 2p) (layerwise)

  c.continual = ml_collections.ConfigDict()
  c.continual.method = "efficient_packnet"   # packnet | efficient_packnet
  c.continual.num_tasks = 5
  c.continual.permutation_seed = 0
  c.continual.steps_per_task = 3000
  c.continual.finetune_steps = 500    # 0 turns fine-tuning off
  c.continual.prune_fraction = 0.75   # packnet: fraction of the task's weights freed
  c.continual.gamma = 0.99            # efficient_packnet: keep the sparsest with P_s >= gamma P
  c.continual.scope = "layerwise"     # layerwise | global ranking by |w|
  c.continual.min_keep_fraction = 0.01
  c.continual.num_keep_fractions = 25
  c.continual.stop_when_full = False  # end the stream when a layer has no free weight left

  c.sweep = ml_collections.ConfigDict()   # what the sweep scripts iterate over
  c.sweep.alphas = (1.0,)
  c.sweep.seeds = (0,)
  c.sweep.methods = ("none",)
  c.sweep.levels = (0.9,)
  c.sweep.learning_rates = (0.1,)   # the study scripts tune the lr per alpha over these
  c.sweep.gammas = (0.99,)          # continual study: EfficientPackNet tolerances
  c.sweep.prune_fractions = (0.75,)  # continual study: PackNet baselines
  return c


def load_module(path: str, name: Optional[str] = None) -> ModuleType:
  """The config file at ``path`` as a module, so one experiment file can start from another::

      cifar = config_lib.load_module(os.path.join(os.path.dirname(__file__), "cifar10_oneshot.py"))
      config = cifar.get_config()
  """
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist")
  name = name or os.path.splitext(os.path.basename(path))[0] + "_config"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class ConfigError(ValueError):
  """A config value that means nothing; the message is one line naming the field."""


def _int(value: Any, field: str, low: int = 0) -> int:
  if isinstance(value, bool) or not float(value).is_integer() or int(value) < low:
    raise ConfigError(f"{field} must be an integer >= {low}, got {value!r}")
  return int(value)


def _choice(value: Any, field: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ConfigError(f"{field} must be one of {list(choices)}, got {value!r}")


def _fraction(value: Any, field: str, low: float, high: float, closed_high: bool = False
              ) -> float:
  v = float(value)
  if not (low <= v <= high if closed_high else low <= v < high):
    raise ConfigError(f"{field} must be in [{low}, {high}{']' if closed_high else ')'}, "
                      f"got {value!r}")
  return v


def _keep_fraction(value: Any, field: str) -> None:
  if not 0.0 < float(value) <= 1.0:
    raise ConfigError(f"{field} must be in (0, 1], got {value!r}")


def validate(config: ml_collections.ConfigDict, num_train: Optional[int] = None) -> None:
  """Checks every field a run reads, before any data is loaded or step is taken.

  ``num_train`` (once the data are loaded) also bounds the batch size. Raises
  :class:`ConfigError` (or the library's own ValueError) with one line naming the field.
  """
  from powerprop_jax import curves, models, optim, transform  # pylint: disable=g-import-not-at-top
  from powerprop_jax.data import augment  # pylint: disable=g-import-not-at-top
  from powerprop_jax.sparsity import builders  # pylint: disable=g-import-not-at-top
  c = config
  try:
    transform.validate_alpha(c.alpha)
  except ValueError as e:
    raise ConfigError(f"alpha: {e}") from None
  _int(c.seed, "seed")
  _choice(c.data.name, "data.name", DATA_SETS)
  _choice(c.model.name, "model.name", sorted(models.MODELS))
  _choice(c.model.compute_dtype, "model.compute_dtype", ("float32", "bfloat16"))
  _int(c.model.num_classes, "model.num_classes", 2)
  if not float(c.model.width) > 0:
    raise ConfigError(f"model.width must be > 0, got {c.model.width!r}")
  t = c.train
  steps = _int(t.steps, "train.steps", 1)
  batch = _int(t.batch_size, "train.batch_size", 1)
  for field in ("chunk_steps", "eval_batch_size"):
    _int(t[field], f"train.{field}", 1)
  for field in ("num_devices", "log_every", "eval_every", "checkpoint_every"):
    _int(t[field], f"train.{field}")
  _choice(t.augment, "train.augment", sorted(augment.AUGMENTATIONS))
  _fraction(t.label_smoothing, "train.label_smoothing", 0.0, 1.0)
  if num_train is not None and batch > num_train:
    raise ConfigError(f"train.batch_size={batch} exceeds the {num_train} training examples of "
                      f"{c.data.name}; lower train.batch_size")
  optim.make_optimizer(c.optimizer, steps)
  s = c.sparsity
  _choice(s.method, "sparsity.method", sorted(builders.METHODS))
  level = _fraction(s.level, "sparsity.level", 0.0, 1.0)
  if s.method != "none" and level == 0.0:
    raise ConfigError(f"sparsity.method={s.method} needs sparsity.level in (0, 1), got 0")
  _choice(s.distribution, "sparsity.distribution", ("uniform", "erk"))
  _choice(c.prune.scope, "prune.scope", curves.SCOPES)
  _keep_fraction(c.prune.min_keep_fraction, "prune.min_keep_fraction")
  _int(c.prune.num_keep_fractions, "prune.num_keep_fractions", 1)
  if float(c.prune.output_layer_multiplier) < 1.0:
    raise ConfigError(f"prune.output_layer_multiplier must be >= 1, got "
                      f"{c.prune.output_layer_multiplier!r}")
  validate_continual(c.continual)
  w = c.sweep
  for alpha in w.alphas:
    try:
      transform.validate_alpha(alpha)
    except ValueError as e:
      raise ConfigError(f"sweep.alphas: {e}") from None
  for seed in w.seeds:
    _int(seed, "sweep.seeds")
  for method in w.methods:
    _choice(method, "sweep.methods", sorted(builders.METHODS))
  for lv in w.levels:
    _fraction(lv, "sweep.levels", 0.0, 1.0)
  for lr in w.learning_rates:
    if not float(lr) > 0:
      raise ConfigError(f"sweep.learning_rates must all be > 0, got {lr!r}")
  for g in w.gammas:
    if not 0.0 < float(g) <= 1.0:
      raise ConfigError(f"sweep.gammas must be in (0, 1], got {g!r}")
  for f in w.prune_fractions:
    if not 0.0 < float(f) < 1.0:
      raise ConfigError(f"sweep.prune_fractions must be in (0, 1), got {f!r}")


def validate_continual(c: ml_collections.ConfigDict) -> None:
  """Checks the ``continual`` section (one line naming the bad field and its valid range)."""
  _choice(c.method, "continual.method", ("packnet", "efficient_packnet"))
  if not 0.0 < float(c.gamma) <= 1.0:
    raise ConfigError(f"continual.gamma must be in (0, 1], got {c.gamma!r}")
  if not 0.0 < float(c.prune_fraction) < 1.0:
    raise ConfigError(f"continual.prune_fraction must be in (0, 1), got {c.prune_fraction!r}")
  _int(c.num_tasks, "continual.num_tasks", 1)
  _int(c.steps_per_task, "continual.steps_per_task", 1)
  _int(c.finetune_steps, "continual.finetune_steps")
  _int(c.permutation_seed, "continual.permutation_seed")
  _choice(c.scope, "continual.scope", ("layerwise", "global"))
  _keep_fraction(c.min_keep_fraction, "continual.min_keep_fraction")
  _int(c.num_keep_fractions, "continual.num_keep_fractions", 1)
