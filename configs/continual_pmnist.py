"""Permuted MNIST continual learning with PackNet / EfficientPackNet (PAPER.md section 5).

LeNet-300-100 with one shared 10-way head; task 0 is plain MNIST, task t >= 1 a pixel
permutation seeded by (continual.permutation_seed, t). Plain SGD lr 0.1, batch 60 (the
official Powerprop setup: no momentum, no weight decay).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.alpha = 1.0

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist"
  config.data.source = "auto"
  config.data.dir = ""
  config.data.num_validation = 5000

  config.model = ml_collections.ConfigDict()
  config.model.name = "lenet_300_100"
  config.model.num_classes = 10

  config.continual = ml_collections.ConfigDict()
  config.continual.method = "efficient_packnet"   # packnet | efficient_packnet
  config.continual.num_tasks = 5
  config.continual.permutation_seed = 0
  config.continual.steps_per_task = 3000
  config.continual.finetune_steps = 500           # 0 turns fine-tuning off
  config.continual.prune_fraction = 0.75          # packnet: fraction of t's weights freed
  config.continual.gamma = 0.99                   # efficient_packnet: P_s >= gamma * P
  config.continual.scope = "layerwise"           # layerwise | global ranking by |w|
  config.continual.min_keep_fraction = 0.01       # efficient_packnet keep grid:
  config.continual.num_keep_fractions = 25        #   geomspace(min_keep_fraction, 1, num)

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 60
  config.train.chunk_steps = 500

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.0
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 0.0
  config.optimizer.schedule = "constant"
  config.optimizer.warmup_steps = 0

  config.sweep = ml_collections.ConfigDict()
  config.sweep.alphas = (1.0, 4.0)
  config.sweep.seeds = (0,)
  return config
