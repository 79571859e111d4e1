"""The training loop keeps the devices fed: input is prefetched in a background thread, the
host reads metrics only at log/eval/checkpoint boundaries, and a non-finite loss found late
still names its first step and leaves no checkpoint after it."""

import json
import os
import threading
import time

import numpy as np
import pytest

from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import data, parallel, train


def test_prefetch_runs_ahead_in_order_and_raises():
  second_made = threading.Event()

  def items():
    yield 0
    second_made.set()
    yield 1
    raise RuntimeError("reader broke")

  it = parallel.prefetch(items(), depth=2)
  first, _ = next(it)
  assert first == 0 and second_made.wait(5)   # made while the consumer holds item 0
  assert next(it)[0] == 1
  with pytest.raises(RuntimeError, match="reader broke"):
    next(it)


def test_closing_waits_for_the_item_being_made():
  """The producer is inside the making of an item (a transfer, in the loop) when the consumer
  stops: closing returns only once that thread is done, so no thread is left running in C++
  when the interpreter exits (which aborts the process)."""
  making, finished = threading.Event(), threading.Event()

  def items():
    yield 0
    making.set()
    time.sleep(0.5)   # a slow transfer of the next item
    finished.set()
    yield 1

  it = parallel.prefetch(items(), depth=1)
  assert next(it)[0] == 0 and making.wait(5)
  it.close()
  assert finished.is_set()


def _config(**train_fields):
  c = config_lib.base()
  c.alpha = 2.0
  c.train.update({"steps": 12, "batch_size": 20, "chunk_steps": 1, "log_every": 0,
                  "eval_every": 0, "checkpoint_every": 0, **train_fields})
  return c


def _datasets():
  return data.prototype_digits(200, 50, seed=0, dim=32)


def test_host_reads_metrics_only_at_boundaries(tmp_path, monkeypatch):
  fetches = []
  fetch = train.Window.fetch
  monkeypatch.setattr(train.Window, "fetch", lambda w: fetches.append(w.steps) or fetch(w))
  train.train_and_evaluate(_config(log_every=4, eval_every=6), str(tmp_path), _datasets(),
                           log=lambda m: None)
  assert fetches == [4, 2, 2, 4]    # steps 4, 6, 8, 12 of twelve 1-step chunks
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records] == [4, 6, 8, 12]
  for r in records:
    assert 0.0 <= r["input_wait_fraction"] <= 1.0
    assert r["step_time_s"] > 0 and r["images_per_s"] > 0


def test_late_found_nan_names_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
  c = _config(steps=30, checkpoint_every=4)
  c.optimizer.learning_rate = 3.0     # the loss is first NaN at step 6 (checked per step too)
  with pytest.raises(train.TrainingDiverged,
                     match=r"loss became nan at step 6;.*last good checkpoint: step 4"):
    train.train_and_evaluate(c, str(tmp_path), _datasets(), log=lambda m: None)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records] == [4] and np.isfinite(records[0]["train_loss"])
