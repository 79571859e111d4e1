"""Permuted MNIST continual learning with PackNet / EfficientPackNet (PAPER.md section 5).

LeNet-300-100 with one shared 10-way head; task 0 is plain MNIST, task t >= 1 a pixel
permutation seeded by (continual.permutation_seed, t). Plain SGD lr 0.1, batch 60 (the
official Powerprop setup: no momentum, no weight decay). The ``continual`` fields and their
defaults are in ``powerprop_jax/experiment/config.py``.
"""

import ml_collections

from powerprop_jax.experiment import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  config = config_lib.base()
  config.train.chunk_steps = 500
  config.sweep.alphas = (1.0, 4.0)
  return config
