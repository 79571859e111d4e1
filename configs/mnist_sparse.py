"""MNIST LeNet-300-100 sparse training (PAPER.md section 4 methods on the section 2 model).

SGD lr 0.1, batch 60 as the official recipe, 20,000 steps; the sparsity method, level and
schedule are the ``sparsity`` fields (see powerprop_jax/sparsity/builders.py).
``scripts/sparse_mnist.py`` sweeps ``sweep.methods`` x ``sweep.alphas`` x ``sweep.levels`` x
``sweep.seeds``. Top-KAST: the paper's uniform density with the first and last layers dense
is what ``configs/imagenet_resnet50.py`` uses; here ERK spreads the sparsity over the three
layers instead, because LeNet's last layer holds only 0.4% of the weights and its first 88%:
keeping both dense would leave 90% sparsity to be met by the 30k-weight middle layer alone.
"""

import ml_collections

from powerprop_jax.experiment import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  config = config_lib.base()
  config.train.steps = 20_000

  config.sparsity.method = "rigl"
  config.sparsity.level = 0.9
  config.sparsity.distribution = "erk"

  config.sweep.methods = ("none", "gradual", "topkast", "rigl", "set")
  config.sweep.alphas = (1.0, 2.0)
  config.sweep.levels = (0.9, 0.95)
  return config
