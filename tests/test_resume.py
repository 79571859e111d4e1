"""A run stopped after a checkpoint and restarted ends with the same params as one straight run."""

import jax
import numpy as np

from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import train
from powerprop_jax.experiment.data import Dataset


def _config(steps):
  c = config_lib.base()
  c.seed, c.alpha = 3, 2.0
  c.model.update({"name": "cifar_convnet", "num_classes": 10, "width": 0.25})
  c.train.update({
      "steps": steps, "batch_size": 4, "chunk_steps": 2, "log_every": 2, "eval_every": 2,
      "checkpoint_every": 2, "augment": "crop_flip", "unroll": True})
  c.optimizer.update({"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4})
  return c


def test_resume_matches_uninterrupted(tmp_path):
  """6 steps straight == 4 steps, then a restart that resumes from the step-4 checkpoint."""
  rng = np.random.default_rng(0)
  d = Dataset(rng.normal(size=(10, 32, 32, 3)).astype(np.float32),
              rng.integers(0, 10, 10).astype(np.int32))
  data = {"train": d, "validation": d}
  quiet = lambda m: None  # noqa: E731
  straight, _ = train.train_and_evaluate(_config(6), str(tmp_path / "a"), data, log=quiet)
  train.train_and_evaluate(_config(4), str(tmp_path / "b"), data, log=quiet)
  logs = []
  resumed, _ = train.train_and_evaluate(_config(6), str(tmp_path / "b"), data, log=logs.append,
                                        allow_extend=True)
  assert any("resumed from step 4" in m for m in logs), logs
  assert int(resumed.step) == 6
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                         (resumed.params, resumed.net_state, resumed.opt_state),
                         (straight.params, straight.net_state, straight.opt_state))
