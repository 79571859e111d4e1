"""CIFAR-10 conv net one-shot pruning (PAPER.md section 3).

Network (the open architecture, decided in PAPER.md section 3): ``cifar_convnet``, conv
64-64-128-128-256-256 (3x3, batch norm, ReLU, 2x2 max-pool after each pair), then dense
256-256-10. Data: the offline npz subset (9k train / 1k validation / 2k test) or tfds cifar10.
Train: SGD momentum 0.9, lr 0.05 cosine, batch 128, weight decay 5e-4, crop+flip augmentation.
Prune-and-evaluate: as MNIST (the base config's ``prune`` fields).
"""

import ml_collections

from powerprop_jax.experiment import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  config = config_lib.base()
  config.data.name = "cifar10"
  config.data.source = "npz"          # npz | tfds
  config.data.dir = "../shared/data"  # npz dir, or tfds data_dir ("" = tfds default)
  config.data.num_validation = 1000

  config.model.name = "cifar_convnet"

  config.train.steps = 20_000
  config.train.batch_size = 128
  config.train.eval_batch_size = 1000
  config.train.chunk_steps = 10       # short unrolled chunks: XLA:CPU runs convs in loops slowly
  config.train.unroll = True
  config.train.log_every = 1000
  config.train.eval_every = 2000
  config.train.checkpoint_every = 2000
  config.train.augment = "crop_flip"  # pad 4, on device

  config.optimizer.learning_rate = 0.05
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  config.optimizer.schedule = "cosine"

  config.sweep.alphas = (1.0, 2.0)
  return config
