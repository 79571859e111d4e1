"""The CIFAR conv net in the training loop: batch-norm state flows, eval uses is_training=False."""

import os

import jax
import numpy as np
import pytest

from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import train
from powerprop_jax.experiment.data import Dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
cifar10_oneshot = config_lib.load_module(os.path.join(ROOT, "configs", "cifar10_oneshot.py"))


@pytest.mark.slow
def test_cifar_convnet_trains_with_augment_and_batchnorm_state(tmp_path):
  config = cifar10_oneshot.get_config()
  config.alpha = 2.0
  config.model.width = 0.25
  config.train.steps, config.train.batch_size, config.train.chunk_steps = 2, 8, 2
  config.train.eval_every = config.train.log_every = config.train.checkpoint_every = 2
  rng = np.random.default_rng(0)
  ds = Dataset(rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
               rng.integers(0, 10, 16).astype(np.int32))
  datasets = {"train": ds, "validation": ds, "test": ds}
  state, exp = train.train_and_evaluate(config, str(tmp_path), datasets, log=lambda s: None)
  assert int(state.step) == 2
  # batch-norm moving statistics were updated through net_state.
  before = jax.tree_util.tree_leaves(exp.model.init(jax.random.PRNGKey(0), ds.images[:1],
                                                    is_training=True)[1])
  after = jax.tree_util.tree_leaves(state.net_state)
  assert len(after) == 36  # 6 batch norms x (mean, var) x (average, hidden, counter)
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  # eval runs in inference mode: deterministic and does not depend on the batch composition.
  evaluate = train.make_eval_fn(exp.model, exp.reparam, batch_size=4)
  acc = evaluate(state.params, state.net_state, ds)
  assert acc == evaluate(state.params, state.net_state, ds)
  assert 0.0 <= acc <= 1.0
