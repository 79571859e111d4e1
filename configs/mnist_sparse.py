"""MNIST LeNet-300-100 sparse training (PAPER.md section 4 methods on the section 2 model).

SGD lr 0.1, batch 60 as the official recipe; the sparsity method, level and schedule are the
``sparsity`` fields (see powerprop_jax/sparsity/builders.py). ``scripts/sparse_mnist.py`` sweeps
``sweep.methods`` x ``sweep.alphas`` x ``sweep.levels`` x ``sweep.seeds``.
"""

import ml_collections

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
  config.train.steps = 20_000
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

  config.sparsity = builders.default_config("rigl")
  config.sparsity.level = 0.9
  config.sparsity.distribution = "erk"

  config.sweep = ml_collections.ConfigDict()
  config.sweep.methods = ("none", "gradual", "topkast", "rigl", "set")
  config.sweep.alphas = (1.0, 4.0)
  config.sweep.levels = (0.9, 0.95)
  config.sweep.seeds = (0,)
  return config
