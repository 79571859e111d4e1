"""Study 1 on the CIFAR-10 subset network (issue 13): the most telling cells at the longest
budget a 2-core CPU allows.

The CIFAR conv net of ``configs/cifar10_oneshot.py`` at width 0.25 (convs 16-16-32-32-64-64,
dense 256-256-10; 0.40M weights), SGD momentum 0.9, cosine lr, batch 128, weight decay 5e-4,
crop+flip, 800 steps (11 epochs of the 9k-image subset; about 5 min per run on one core).
Cells: RigL (ERK) at 95% and 99% sparsity and the dense reference, alpha 1 and 1.25 (the best
alpha of the MNIST study); lr tuned per cell over ``sweep.learning_rates`` on the validation
split with seed 0, then seed 1 reruns the chosen lr.

  python scripts/study_sparse.py --config=configs/study_sparse_cifar.py \
      --workdir=runs/study_sparse_cifar [--shard=0/2]
"""

import os

import ml_collections

from powerprop_jax.experiment import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  cifar = config_lib.load_module(os.path.join(os.path.dirname(__file__), "cifar10_oneshot.py"))
  config = cifar.get_config()
  config.model.width = 0.25
  config.train.steps = 800
  config.train.log_every = 100
  config.train.eval_every = 400
  config.train.checkpoint_every = 200

  config.sweep.methods = ("rigl",)
  config.sweep.levels = (0.95, 0.99)
  config.sweep.alphas = (1.0, 1.25)
  config.sweep.learning_rates = (0.05, 0.1, 0.2, 0.4)
  config.sweep.seeds = (0, 1)
  return config
