"""The one base config: every field any experiment, script or the loop reads, with its default.

Experiment files in ``configs/`` start from :func:`base` and override what differs (as
Flax's ImageNet example does), so each default lives here and nowhere else: the library
reads ``config.section.field`` directly and never supplies a fallback of its own.

Nothing here checks values: each section is checked by the code that reads it
(``train.check_config`` for what a training run builds, ``continual.check_config``,
``sweep.check_config``, ``curves.check_config``), before any data is loaded.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import Optional

import ml_collections

from powerprop_jax.checks import ConfigError


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
  c.data.workers = -1                 # imagenet2012: grain worker processes (0 = in-process;
                                      # -1 = auto: the cores this process may use minus 2)
  c.data.prefetch = 2                 # imagenet2012: uint8 batches prefetched per worker (bounds
                                      # each worker's memory: prefetch x B/P x S x S x 3 bytes)

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
  c.train.microbatches = 1            # sequential microbatches per step (gradient accumulation;
                                      # defines the run: batch norm sees B/microbatches examples)
  c.train.unroll = False              # unroll the scan (XLA:CPU runs loop-body convs slowly)
  c.train.num_devices = 0             # data-parallel devices (0 = all)
  c.train.distributed = False         # call jax.distributed.initialize() first (multi-host)
  c.train.log_every = 10_000
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 10_000
  c.train.augment = "none"            # none | crop_flip (on device)
  c.train.compilation_cache = ""      # persistent JAX compilation cache dir ("" = off)
  c.train.profile = ""                # "START:STOP": trace those steps into workdir/profile
  c.train.peak_tflops = 0.0           # per-device peak for device_utilisation (0 = by device
                                      # kind: known GPUs/TPUs; none on CPU)
  c.train.label_smoothing = 0.0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"            # sgd | adam
  c.optimizer.learning_rate = 0.1
  c.optimizer.momentum = 0.0
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 0.0
  c.optimizer.weight_decay_kernels_only = False   # decay conv/linear kernels only, not
                                                # biases or batch-norm scales/offsets
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
  c.sparsity.structure = ""           # oneshot/gradual: "N:M" (e.g. "2:4") along each kernel's
                                      # input axis, level = 1 - N/M; "" = unstructured

  c.prune = ml_collections.ConfigDict()   # post-training one-shot pruning curves
  c.prune.scope = "layerwise"         # layerwise | global
  c.prune.min_keep_fraction = 0.01    # keep fractions geomspace(min_keep_fraction, 1, num)
  c.prune.num_keep_fractions = 20
  c.prune.output_layer_multiplier = 2.0   # output layer keeps min(1, 2p) (layerwise)
  c.prune.structures = ""             # comma list of N:M structures ("2:4,1:4,1:8") also
                                      # evaluated, beside unstructured at the same density

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
  sys.modules[name] = module  # dataclasses and pickling look their module up by name
  spec.loader.exec_module(module)
  return module


__all__ = ["ConfigError", "base", "load_module"]
