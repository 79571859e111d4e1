"""Gradient accumulation: K sequential microbatches per step make the same run as one batch
for a network without batch norm, RigL's mask updates included."""

import chex
import pytest

from powerprop_jax.checks import ConfigError
from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import data, train


def _config(microbatches: int):
  c = config_lib.base()
  c.alpha = 2.0
  c.train.update({"steps": 6, "batch_size": 32, "chunk_steps": 3, "microbatches": microbatches,
                  "log_every": 3, "eval_every": 6, "checkpoint_every": 6})
  c.optimizer.update({"momentum": 0.9, "learning_rate": 0.1})
  c.sparsity.update({"method": "rigl", "level": 0.8, "update_every": 2, "end_step": 6})
  return c


def _train(tmp_path, microbatches: int):
  ds = data.prototype_digits(96, 50, seed=0, dim=64)
  return train.train_and_evaluate(_config(microbatches), str(tmp_path / str(microbatches)),
                                  ds, log=lambda m: None)[0]


def test_four_microbatches_equal_one_batch(tmp_path):
  one, four = _train(tmp_path, 1), _train(tmp_path, 4)
  chex.assert_trees_all_equal(train.forward_masks(one.opt_state),
                              train.forward_masks(four.opt_state))
  chex.assert_trees_all_close(one.params, four.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(one.opt_state, four.opt_state, rtol=1e-5, atol=1e-6)


def test_microbatches_must_split_the_batch_over_the_devices():
  c = _config(3)
  with pytest.raises(ConfigError, match="train.microbatches=3"):
    train.check_config(c)
  c.train.microbatches = 4
  with pytest.raises(ConfigError, match="multiple of 64 = 16 devices"):
    train.check_config(c, num_devices=16)
  train.check_config(c, num_devices=8)
