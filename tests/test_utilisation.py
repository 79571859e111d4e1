"""Device utilisation in the log: the model FLOPs of one step (forward and backward on the
whole global batch) over the time the steps took, against the chips' peak."""

import json

import numpy as np
import pytest

from powerprop_jax.checks import ConfigError
from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import data, flops, parallel, train
from powerprop_jax.experiment.data import base as data_base

BATCH, DIM = 100, 32
LAYERS = [(DIM, 300), (300, 100), (100, 10)]   # LeNet-300-100 on 32 inputs


def _config(microbatches=1, peak=1.0):
  c = config_lib.base()
  c.alpha = 2.0
  c.train.update({"steps": 20, "batch_size": BATCH, "chunk_steps": 5, "log_every": 10,
                  "eval_every": 0, "checkpoint_every": 0, "microbatches": microbatches,
                  "peak_tflops": peak})
  return c


def _records(tmp_path, config):
  train.train_and_evaluate(config, str(tmp_path), data.prototype_digits(200, 50, seed=0,
                                                                        dim=DIM),
                           log=lambda m: None)
  return [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]


def test_step_flops_count_the_whole_global_batch():
  splits = data_base.DataSplits.from_datasets(data.prototype_digits(200, 50, seed=0, dim=DIM))
  exp = train.build_experiment(_config(), splits.sample_input)
  mesh = parallel.make_mesh(0)
  # The matmuls alone: forward 2BMN per layer, backward 4BMN (2BMN without the input's
  # gradient for the first layer); the loss and activations add a little on top.
  matmuls = sum(6 * BATCH * m * n for m, n in LAYERS) - 2 * BATCH * DIM * 300
  got = {}
  for k in (1, 4):
    got[k], peak = train.utilisation_basis(_config(microbatches=k), exp, exp.init_state,
                                           splits.sample_input, mesh)
    assert peak == 1e12 * mesh.size
  assert matmuls <= got[1] <= 1.2 * matmuls, (got, matmuls)
  assert got[4] == got[1]   # 4 microbatches of 25 examples: the same examples, the same FLOPs
  assert train.utilisation_basis(_config(peak=0.0), exp, exp.init_state, splits.sample_input,
                                 mesh) == (0.0, 0.0)   # a CPU has no peak: none reported


@pytest.mark.parametrize("microbatches", [1, 4])
def test_logged_utilisation_is_step_flops_per_second_over_the_peak(tmp_path, microbatches):
  records = _records(tmp_path, _config(microbatches))
  splits = data_base.DataSplits.from_datasets(data.prototype_digits(200, 50, seed=0, dim=DIM))
  exp = train.build_experiment(_config(), splits.sample_input)
  step_flops, peak = train.utilisation_basis(_config(), exp, exp.init_state,
                                             splits.sample_input, parallel.make_mesh(0))
  assert [r["step"] for r in records] == [10, 20]
  for r in records:
    np.testing.assert_allclose(r["model_tflops_per_s"] * 1e12 * r["step_time_s"], step_flops,
                               rtol=1e-9)
    np.testing.assert_allclose(r["device_utilisation"], r["model_tflops_per_s"] * 1e12 / peak,
                               rtol=1e-9)


def test_no_peak_no_utilisation(tmp_path):
  records = _records(tmp_path, _config(peak=0.0))
  assert records and all("device_utilisation" not in r and "step_time_s" in r
                         for r in records)


def test_peak_lookup_and_bad_peak():
  assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert flops.peak_tflops("TPU v4") == 275.0 and flops.peak_tflops("cpu") == 0.0
  c = _config(peak=-1.0)
  with pytest.raises(ConfigError, match="train.peak_tflops must be >= 0"):
    train.check_config(c)
