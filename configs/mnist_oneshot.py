"""MNIST LeNet-300-100 one-shot pruning, the official Powerpropagation protocol (Figure 1a).

SGD lr 0.1, no momentum, batch 60, 50,000 steps; the last 5,000 training images validate.
After training, per-layer one-shot magnitude pruning at keep fractions geomspace(0.01, 1, 20)
with the output layer keeping min(1, 2p), no fine-tuning (``scripts/prune_eval.py``). Every
field and default: ``powerprop_jax/experiment/config.py``; this protocol is the base config itself.
"""

import ml_collections

from powerprop_jax.experiment import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  config = config_lib.base()
  config.sweep.alphas = (1.0, 2.0, 3.0, 4.0, 5.0)
  return config
