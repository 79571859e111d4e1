"""No silent wrong results: every bad input either refuses with one line naming what is wrong
(and the scripts exit 1) or recovers and says so."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import powerprop_jax as pp
from powerprop_jax.experiment import config as config_lib
from powerprop_jax import curves
from powerprop_jax.experiment import continual, data, sweep, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(ROOT, "..", "shared", "data", "mnist")
needs_mnist = pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="../shared/data absent")


def _datasets(n=240, seed=0):
  return data.prototype_digits(n, 60, seed)


def _config(steps=40, **optimizer):
  c = config_lib.base()
  c.train.update({"steps": steps, "batch_size": 20, "chunk_steps": 10, "log_every": 10,
                  "eval_every": 20, "checkpoint_every": 20})
  c.optimizer.update(optimizer)
  return c


def _script(*args, script="scripts/train.py"):
  out = subprocess.run([sys.executable, script, *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  return out.returncode, out.stderr.strip().splitlines()


def _one_line(lines):
  errors = [l for l in lines if l.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in "\n".join(lines), lines
  return errors[0]


# 1. a changed config in an existing workdir
@needs_mnist
def test_changed_config_in_workdir_is_refused(tmp_path):
  common = ["--config=configs/mnist_oneshot.py", f"--config.data.dir={MNIST_DIR}",
            f"--workdir={tmp_path}", "--config.train.steps=100", "--config.train.chunk_steps=50"]
  rc, lines = _script(*common)
  assert rc == 0, lines
  events = [f for f in os.listdir(tmp_path / "tensorboard") if "tfevents" in f]
  assert events, "a run of scripts/train.py leaves TensorBoard event files"
  rc, lines = _script(*common, "--config.optimizer.learning_rate=0.01", "--config.alpha=4")
  line = _one_line(lines)
  assert rc == 1 and "optimizer.learning_rate 0.1 -> 0.01" in line and "alpha 1.0 -> 4" in line
  assert "--allow_changed_config" in line


# 2. damaged checkpoints: fall back to the newest intact one, with a warning, and retrain
def test_damaged_latest_checkpoint_falls_back_and_retrains(tmp_path):
  ds = _datasets()
  straight, _ = train.train_and_evaluate(_config(), str(tmp_path / "a"), ds, log=lambda m: None)
  train.train_and_evaluate(_config(), str(tmp_path / "b"), ds, log=lambda m: None)
  latest = tmp_path / "b" / "checkpoints" / "40"
  biggest = max((p for p in latest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  raw = bytearray(biggest.read_bytes())
  mid = len(raw) // 2
  raw[mid:mid + 64] = bytes(255 - b for b in raw[mid:mid + 64])
  biggest.write_bytes(bytes(raw))
  logs = []
  again, _ = train.train_and_evaluate(_config(), str(tmp_path / "b"), ds, log=logs.append)
  assert any("step 40" in m and "sha256" in m for m in logs), logs
  assert any("resumed from step 20" in m for m in logs), logs
  chex.assert_trees_all_equal(straight.params, again.params)  # retrained 20 -> 40 exactly


# 5. values that mean nothing: refused before any data is loaded or step taken
@pytest.mark.parametrize("script,override,expect", [
    ("scripts/prune_eval.py", "--config.prune.scope=foo", "prune.scope"),
    ("scripts/prune_eval.py", "--config.sweep.seeds=(0.5,)", "sweep.seeds"),
    ("scripts/sparse_mnist.py", "--config.sweep.alphas=()", "sweep.alphas is empty"),
    ("scripts/train.py", "--config.alpha=0.5", "alpha"),
    ("scripts/train.py", "--config.sparsity.method=rigl", "sparsity.level"),
    ("scripts/train.py", "--config.train.stepz=5", 'did you mean "train.steps"'),
    ("scripts/train.py", "--config.optimizer.decay_factor=-1", "optimizer.decay_factor"),
    ("scripts/train.py", "--config.optimizer.weight_decay=-1", "optimizer.weight_decay"),
    ("scripts/train.py", "--config.data.num_validation=0", "data.num_validation"),
])
def test_meaningless_values_are_one_line(tmp_path, script, override, expect):
  """Each script checks the sections it reads before any data is loaded (the data dir here
  does not exist, so a check that ran late would report the data dir instead)."""
  rc, lines = _script("--config=configs/mnist_oneshot.py", "--config.data.dir=/nonexistent",
                      f"--workdir={tmp_path}", override, script=script)
  assert rc == 1 and expect in _one_line(lines), lines


def test_sparsity_that_empties_a_layer_names_it(tmp_path):
  c = _config()
  c.sparsity.update({"method": "gradual", "level": 0.99999})
  with pytest.raises(ValueError, match=r"leaves no weight in layer.*linear_2"):
    train.train_and_evaluate(c, str(tmp_path), _datasets(), log=lambda m: None)


def test_batch_larger_than_the_training_set():
  c = _config()
  c.train.batch_size = 500
  with pytest.raises(config_lib.ConfigError, match="exceeds the 240 training examples"):
    train.check_config(c, num_train=240)


def test_library_refuses_meaningless_input():
  with pytest.raises(ValueError, match="floating-point"):
    pp.powerprop(jnp.arange(4), 2.0)
  w = {"l": {"w": jnp.ones((3, 3))}}
  with pytest.raises(ValueError, match="boolean"):
    pp.masked_optimizer(optax.sgd(0.1), {"l": {"w": jnp.ones((3, 3))}}).init(w)
  with pytest.raises(ValueError, match="NaN"):
    pp.magnitude_masks({"l": {"w": jnp.array([[1.0, jnp.nan]])}}, 0.5)
  with pytest.raises(ValueError, match="unknown layers"):
    pp.magnitude_masks(w, {"l": 0.5, "nope": 0.5}, scope="layerwise")
  with pytest.raises(ValueError, match="selects no parameter"):
    pp.magnitude_masks(w, 0.5, predicate=lambda m, n, s: n == "kernel")
  with pytest.raises(ValueError, match="selects no parameter"):
    pp.effective_params(w, 2.0, predicate=lambda m, n, s: False)


# 6. divergence: stop at the first non-finite loss, keep the last good checkpoint
def test_divergence_stops_at_the_first_nan(tmp_path):
  c = _config(steps=60, learning_rate=1e8)
  c.train.checkpoint_every = 10
  with pytest.raises(train.TrainingDiverged, match=r"loss became (nan|inf) at step \d+"):
    train.train_and_evaluate(c, str(tmp_path), _datasets(), log=lambda m: None)
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert all(np.isfinite(r["train_loss"]) for r in records)  # no NaN written
  ckpts = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
  assert all(s <= records[-1]["step"] for s in ckpts) if ckpts else True


CONFIG_FILES = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_file_loads_and_validates(name):
  """Each experiment file (the ImageNet one per row) builds a config that every section's
  owner accepts, so a typo in a rarely run config fails here, not hours into a job."""
  module = config_lib.load_module(os.path.join(ROOT, "configs", name))
  rows = getattr(module, "ROWS", (None,))
  for row in rows:
    config = module.get_config(row) if row else module.get_config()
    train.check_config(config)
    continual.check_config(config.continual)
    curves.check_config(config.prune)
    sweep.check_config(config)


def test_missing_config_file_is_a_config_error(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    config_lib.load_module(str(tmp_path / "nope.py"))
