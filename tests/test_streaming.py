"""The training loop on the streamed ImageNet path (tfds mock data): a run killed after a
checkpoint and restarted ends with the params of an uninterrupted run, and the whole
evaluation split is counted exactly once."""

import json

import chex
import pytest
import tensorflow_datasets as tfds

from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import data, train


def _config(steps: int = 4):
  c = config_lib.base()
  c.alpha = 2.0
  c.data.update({"name": "imagenet2012", "dir": "", "image_size": 32, "workers": 0})
  c.model.update({"name": "resnet_tiny", "num_classes": 1000})
  c.train.update({"steps": steps, "batch_size": 4, "eval_batch_size": 4, "chunk_steps": 1,
                  "unroll": True, "log_every": 1, "eval_every": 2, "checkpoint_every": 2})
  c.optimizer.update({"momentum": 0.9, "learning_rate": 0.05})
  c.sparsity.update({"method": "topkast", "level": 0.8, "dense_layers": "first,last"})
  return c


class _Killed(Exception):
  pass


def _kill_after(step: int):
  def log(msg: str) -> None:
    if msg.startswith(f"step {step}/"):
      raise _Killed(msg)
  return log


def _run(workdir, log):
  config = _config()
  return train.train_and_evaluate(config, workdir, data.load_splits(config), log=log)[0]


@pytest.mark.slow
def test_killed_streaming_run_resumes_exactly(tmp_path):
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    straight = _run(str(tmp_path / "a"), lambda m: None)
    with pytest.raises(_Killed):   # dies after step 3, its last checkpoint at step 2
      _run(str(tmp_path / "b"), _kill_after(3))
    logs = []
    resumed = _run(str(tmp_path / "b"), logs.append)
  assert any("resumed from step 2" in m for m in logs), logs
  chex.assert_trees_all_equal(straight.params, resumed.params)
  chex.assert_trees_all_equal(straight.opt_state, resumed.opt_state)
  ra = [json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")]
  rb = [json.loads(l) for l in open(tmp_path / "b" / "metrics.jsonl")]
  assert [r["step"] for r in rb] == [1, 2, 3, 4]  # each step once after the resume
  assert [r["train_loss"] for r in ra] == [r["train_loss"] for r in rb]
  # validation: 10 examples in 3 global batches of 4 (the last padded), each counted once
  acc = rb[-1]["validation_accuracy"]
  assert acc == ra[-1]["validation_accuracy"]
  assert abs(acc * 10 - round(acc * 10)) < 1e-9
