"""Every script has what scripts/train.py has: run identity, a lock, input checked before any
work. Real processes where the behaviour is a process's (rerun, a second process, bad data)."""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import data, train
from powerprop_jax.experiment import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(ROOT, "..", "shared", "data", "mnist")
needs_mnist = pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="../shared/data absent")
CONTINUAL = ["scripts/continual.py", "--config=configs/continual_pmnist.py",
             f"--config.data.dir={MNIST_DIR}", "--config.sweep.alphas=(1.0,)",
             "--config.continual.num_tasks=2", "--config.continual.finetune_steps=0",
             "--config.continual.method=packnet",
             "--config.continual.num_keep_fractions=3", "--config.train.chunk_steps=20"]


def _run(*args, timeout=600):
  out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
  return out.returncode, out.stdout, out.stderr.strip().splitlines()


@pytest.mark.slow
@needs_mnist
def test_continual_rerun_with_another_config_is_refused(tmp_path):
  rc, out, err = _run(*CONTINUAL, f"--workdir={tmp_path}", "--config.continual.steps_per_task=20")
  assert rc == 0, err[-5:]
  before = (tmp_path / "results.json").read_text()
  rc, out, err = _run(*CONTINUAL, f"--workdir={tmp_path}", "--config.continual.steps_per_task=30")
  assert rc == 1 and len(err) == 1, err
  assert "another config" in err[0] and "continual.steps_per_task 20 -> 30" in err[0]
  assert (tmp_path / "results.json").read_text() == before   # the old results stand


@needs_mnist
def test_a_second_continual_process_on_one_workdir_is_refused(tmp_path):
  first = subprocess.Popen([sys.executable, *CONTINUAL, f"--workdir={tmp_path}",
                            "--config.continual.steps_per_task=100000"], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    record = tmp_path / "alpha1_seed0" / workdir_lib.RUN_CONFIG_FILE
    deadline = time.time() + 300
    while not record.exists() and time.time() < deadline and first.poll() is None:
      time.sleep(0.5)
    assert record.exists(), "the first stream never started"
    rc, _, err = _run(*CONTINUAL, f"--workdir={tmp_path}",
                      "--config.continual.steps_per_task=100000")
    assert rc == 1 and len(err) == 1 and "in use by another run" in err[0], err
    assert f"pid {first.pid}" in err[0]
  finally:
    first.kill()
    first.wait()


@needs_mnist
def test_labels_outside_the_models_classes_are_refused(tmp_path):
  rc, _, err = _run("scripts/train.py", "--config=configs/mnist_oneshot.py",
                    f"--config.data.dir={MNIST_DIR}", f"--workdir={tmp_path}",
                    "--config.model.num_classes=5")
  assert rc == 1 and len(err) == 1, err
  assert "labels up to 9" in err[0] and "model.num_classes=5" in err[0]
  assert not (tmp_path / "checkpoints").exists()


@needs_mnist
def test_swapped_mnist_train_and_test_files_are_refused(tmp_path):
  for name in os.listdir(MNIST_DIR):
    swapped = (name.replace("train-", "XX-").replace("t10k-", "train-").replace("XX-", "t10k-")
               if name.endswith(".gz") else name)
    os.symlink(os.path.join(os.path.abspath(MNIST_DIR), name), tmp_path / swapped)
  with pytest.raises(data.DataError, match="swapped"):
    data.load_mnist("idx", str(tmp_path))


def _tiny_config(alpha):
  c = config_lib.base()
  c.alpha = alpha
  c.train.update({"steps": 20, "batch_size": 10, "chunk_steps": 10, "eval_batch_size": 100,
                  "log_every": 0, "eval_every": 0, "checkpoint_every": 10})
  return c


def test_a_workdir_resumed_on_other_data_is_refused(tmp_path):
  """data.dir is not part of a run (the same data may move), but what it holds is: the run
  records a fingerprint of its data and a resume on other content is refused."""
  train.train_and_evaluate(_tiny_config(1.0), str(tmp_path), data.prototype_digits(200, 50),
                           log=lambda m: None)
  longer = _tiny_config(1.0)
  longer.train.steps = 30
  with pytest.raises(workdir_lib.WorkdirError, match="data.fingerprint"):
    train.train_and_evaluate(longer, str(tmp_path), data.prototype_digits(200, 50, seed=1),
                             log=lambda m: None, allow_extend=True)
  train.train_and_evaluate(longer, str(tmp_path), data.prototype_digits(200, 50),
                           log=lambda m: None, allow_extend=True)   # the same data: resumes


def test_a_deleted_run_record_never_lets_a_checkpoint_resume_under_another_config(tmp_path):
  datasets = data.prototype_digits(200, 50)
  train.train_and_evaluate(_tiny_config(1.0), str(tmp_path), datasets, log=lambda m: None)
  os.remove(tmp_path / workdir_lib.RUN_CONFIG_FILE)   # as the old advice "delete it" said
  with pytest.raises(workdir_lib.WorkdirError, match="checkpoints but no run record"):
    train.train_and_evaluate(_tiny_config(2.0), str(tmp_path), datasets, log=lambda m: None)
  shutil.rmtree(tmp_path / "checkpoints")
  train.train_and_evaluate(_tiny_config(2.0), str(tmp_path), datasets, log=lambda m: None)
  assert workdir_lib.recorded_fields(str(tmp_path))["alpha"] == 2.0
  assert np.isfinite(workdir_lib.metrics_records(str(tmp_path))[-1]["test_accuracy"])


def test_layer_fields_are_checked_from_shapes_before_any_data():
  """dense_layers and per-layer counts need the model's layers, not its data: refused by
  train.check_config (no data loaded, no workdir taken)."""
  c = config_lib.load_module(os.path.join(ROOT, "configs", "mnist_sparse.py")).get_config()
  c.sparsity.update({"method": "rigl", "level": 0.9, "dense_layers": "linear_9"})
  with pytest.raises(train.checks.ConfigError, match="dense layer 'linear_9' is not a prunable"):
    train.check_config(c)
  c.sparsity.update({"dense_layers": "", "structure": "1:8", "level": 0.875})
  with pytest.raises(train.checks.ConfigError, match=r"linear_1.*\(300, 100\)"):
    train.check_config(c)
  c.sparsity.dense_layers = "mlp/~/linear_1,last"
  train.check_config(c)
