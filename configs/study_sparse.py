"""Study 1 (issue 13): where Powerpropagation helps sparse-to-sparse training on MNIST.

LeNet-300-100, SGD batch 60, 10,000 steps (11 epochs; the dense network's validation accuracy
gains at most 0.2 points over the last 2,000 steps: see results/study_sparse), Top-KAST (uniform
density, the paper's backward pairing 2 * level - 1 capped at level) and RigL (ERK, the
published schedule) at 95, 98, 99 and 99.5% sparsity, alpha 1, 1.25, 1.5 and 2. The learning
rate is tuned per (method, sparsity, alpha) on the validation split over
``sweep.learning_rates`` with seed ``sweep.seeds[0]``; the other seeds rerun the chosen lr.

  python scripts/study_sparse.py --config=configs/study_sparse.py \
      --config.data.dir=../shared/data/mnist --workdir=runs/study_sparse [--shard=0/2]
"""

import ml_collections

from powerprop_jax.experiment import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  config = config_lib.base()
  config.data.dir = "../shared/data/mnist"
  config.train.steps = 10_000
  config.train.log_every = 10_000
  config.train.eval_every = 2_000
  config.train.checkpoint_every = 5_000
  config.sparsity.distribution = "uniform"

  config.sweep.methods = ("topkast", "rigl")
  config.sweep.levels = (0.95, 0.98, 0.99, 0.995)
  config.sweep.alphas = (1.0, 1.25, 1.5, 2.0)
  config.sweep.learning_rates = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
  config.sweep.seeds = (0, 1, 2)
  return config
