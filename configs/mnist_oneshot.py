"""MNIST LeNet-300-100, the official Powerpropagation protocol (PAPER.md section 2).

Train: SGD lr 0.1, batch 60, 50,000 steps, no momentum, no weight decay.
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
  config.data.name = "mnist"
  config.data.source = "auto"      # auto | idx | tfds ("auto": idx if data.dir holds IDX files)
  config.data.dir = ""             # IDX dir, or tfds data_dir ("" = tfds default)
  config.data.num_validation = 5000

  config.model = ml_collections.ConfigDict()
  config.model.name = "lenet_300_100"
  config.model.num_classes = 10

  config.train = ml_collections.ConfigDict()
  config.train.steps = 50_000
  config.train.batch_size = 60
  config.train.chunk_steps = 1000   # steps per jitted lax.scan call
  config.train.log_every = 10_000
  config.train.eval_every = 10_000
  config.train.checkpoint_every = 10_000
  config.train.label_smoothing = 0.0

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.0
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 0.0
  config.optimizer.schedule = "constant"
  config.optimizer.warmup_steps = 0

  config.sparsity = builders.default_config("none")   # dense; see configs/mnist_sparse.py

  config.prune = oneshot.default_prune_config()

  config.sweep = ml_collections.ConfigDict()
  config.sweep.alphas = (1.0, 2.0, 3.0, 4.0, 5.0)
  config.sweep.seeds = (0,)
  return config
