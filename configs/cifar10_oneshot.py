"""CIFAR-10 conv net one-shot pruning (PAPER.md section 3).

Network (the open architecture, decided in PAPER.md section 3): ``cifar_convnet``, conv
64-64-128-128-256-256 (3x3, batch norm, ReLU, 2x2 max-pool after each pair), then dense
256-256-10. Data: the offline npz subset (9k train / 1k validation / 2k test) or tfds cifar10.
Train: SGD momentum 0.9, lr 0.05 cosine, batch 128, weight decay 5e-4, crop+flip augmentation.
Prune-and-evaluate: one-shot per-layer magnitude pruning at keep fractions
geomspace(0.01, 1, 20), the output layer keeping min(1, 2p), no fine-tuning.
"""

import ml_collections

from powerprop_jax import oneshot
from powerprop_jax.sparsity import builders


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.alpha = 1.0

  config.data = ml_collections.ConfigDict()
  config.data.name = "cifar10"
  config.data.source = "npz"       # npz | tfds
  config.data.dir = "../shared/data"   # npz dir, or tfds data_dir ("" = tfds default)
  config.data.file = "cifar10_jpeg_subset.npz"
  config.data.num_validation = 1000

  config.model = ml_collections.ConfigDict()
  config.model.name = "cifar_convnet"
  config.model.num_classes = 10
  config.model.width = 1.0          # channel multiplier (the CPU tests use 0.25)

  config.train = ml_collections.ConfigDict()
  config.train.steps = 20_000
  config.train.batch_size = 128
  config.train.chunk_steps = 10     # steps per jitted lax.scan call
  config.train.unroll = True        # XLA:CPU runs convs in loop bodies slowly (jax#12868)
  config.train.num_devices = 0      # data parallel over all local devices (0 = all)
  config.train.log_every = 1000
  config.train.eval_every = 2000
  config.train.checkpoint_every = 2000
  config.train.augment = "crop_flip"   # none | crop_flip (pad 4, on device)
  config.train.label_smoothing = 0.0

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.05
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 5e-4
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 0

  config.sparsity = builders.default_config("none")   # dense; see configs/mnist_sparse.py

  config.prune = oneshot.default_prune_config()

  config.sweep = ml_collections.ConfigDict()
  config.sweep.alphas = (1.0, 2.0)
  config.sweep.seeds = (0,)
  return config
