"""Study 2 (issue 13): continual learning at capacity on Permuted MNIST.

20 tasks (enough to fill LeNet-300-100 at the tolerances studied), 1,000 training + 200
fine-tuning steps per task; EfficientPackNet at gamma 0.9, 0.95 and 0.99 with alpha 1 and 2,
each alpha at its own learning rate (tuned on task 0's validation accuracy over
``sweep.learning_rates``, one grid step from a diverging lr), every stream once per seed of
``sweep.seeds`` (initialisation, batches and task permutations); PackNet keeping a fixed
25% / 10% of each task's weights (``prune_fraction`` 0.75 / 0.9) at alpha 1 as the baseline.
A stream stops when a layer has no free weight left (``continual.stop_when_full``): the
number of tasks it accommodated is a result.

  python scripts/study_continual.py --config=configs/study_continual.py \
      --workdir=runs/study_continual [--shard=0/2]
"""

import ml_collections

from powerprop_jax.experiment import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  config = config_lib.base()
  config.data.dir = "../shared/data/mnist"
  config.train.chunk_steps = 500
  config.continual.num_tasks = 20
  config.continual.steps_per_task = 1000
  config.continual.finetune_steps = 200
  config.continual.stop_when_full = True
  config.sweep.alphas = (1.0, 2.0)
  config.sweep.learning_rates = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
  config.sweep.seeds = (0, 1)
  config.sweep.gammas = (0.9, 0.95, 0.99)
  config.sweep.prune_fractions = (0.75, 0.9)
  return config
