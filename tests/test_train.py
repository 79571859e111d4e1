"""The training loop, data loading and scripts: determinism, resume, errors, files written."""

import gzip
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import data, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(ROOT, "..", "shared", "data", "mnist")
mnist_oneshot = config_lib.load_module(os.path.join(ROOT, "configs", "mnist_oneshot.py"))

needs_mnist = pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="../shared/data absent")


def small_datasets(n_train=600, seed=0):
  return data.prototype_digits(n_train, 200, seed)


def small_config(steps=300, alpha=2.0):
  c = mnist_oneshot.get_config()
  c.alpha = alpha
  c.train.steps, c.train.chunk_steps = steps, 100
  c.train.log_every = c.train.eval_every = c.train.checkpoint_every = 100
  return c


class BatchIndicesTest(chex.TestCase):

  def test_pure_function_of_seed_and_step(self):
    a = data.batch_indices(3, 0, 50, 7, 100)
    b = data.batch_indices(3, 20, 30, 7, 100)
    np.testing.assert_array_equal(a[20:], b)
    self.assertFalse(np.array_equal(a, data.batch_indices(4, 0, 50, 7, 100)))

  def test_each_epoch_is_a_permutation(self):
    idx = data.batch_indices(0, 0, 10, 10, 50).ravel()  # exactly 2 epochs
    np.testing.assert_array_equal(np.sort(idx[:50]), np.arange(50))
    np.testing.assert_array_equal(np.sort(idx[50:]), np.arange(50))


class LoopTest(chex.TestCase):

  def test_trains_and_writes_metrics(self):
    wd = self.create_tempdir().full_path
    state, _ = train.train_and_evaluate(small_config(), wd, small_datasets(), log=lambda s: None)
    self.assertEqual(int(state.step), 300)
    records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
    self.assertEqual([r["step"] for r in records], [100, 200, 300])
    self.assertGreater(records[-1]["test_accuracy"], 0.9)

  def test_resume_gives_the_same_params(self):
    ds = small_datasets()
    full_dir, split_dir = self.create_tempdir().full_path, self.create_tempdir().full_path
    full, _ = train.train_and_evaluate(small_config(300), full_dir, ds, log=lambda s: None)
    train.train_and_evaluate(small_config(200), split_dir, ds, log=lambda s: None)  # "killed"
    logs = []
    resumed, _ = train.train_and_evaluate(small_config(300), split_dir, ds, log=logs.append,
                                          allow_extend=True)
    self.assertIn("resumed from step 200", logs[0])
    chex.assert_trees_all_equal(full.params, resumed.params)
    chex.assert_trees_all_equal(full.rng, resumed.rng)

  def test_bad_config_values(self):
    c = small_config()
    c.train.steps = 0
    with self.assertRaisesRegex(ValueError, "train.steps"):
      train.train_and_evaluate(c, self.create_tempdir().full_path, small_datasets())
    c = small_config(alpha=0.5)
    with self.assertRaisesRegex(ValueError, "alpha"):
      train.train_and_evaluate(c, self.create_tempdir().full_path, small_datasets())
    c = small_config()
    c.optimizer.name = "lion"
    with self.assertRaisesRegex(ValueError, "optimizer.name"):
      train.train_and_evaluate(c, self.create_tempdir().full_path, small_datasets())


class DataTest(chex.TestCase):

  def test_tfds_path_under_mock_data(self):
    with tfds.testing.mock_data(num_examples=30):
      ds = data.load_mnist("tfds", "", num_validation=10)
    self.assertEqual(ds["train"].images.shape, (20, 784))
    self.assertEqual(ds["validation"].images.shape, (10, 784))
    self.assertEqual(ds["train"].images.dtype, np.float32)
    self.assertTrue(0.0 <= ds["train"].images.min() and ds["train"].images.max() <= 1.0)
    self.assertEqual(ds["test"].labels.dtype, np.int32)

  @needs_mnist
  def test_idx_files(self):
    ds = data.load_mnist("auto", MNIST_DIR)
    self.assertEqual(ds["train"].images.shape, (55000, 784))
    self.assertEqual(ds["validation"].images.shape, (5000, 784))
    self.assertEqual(ds["test"].images.shape, (10000, 784))
    np.testing.assert_array_equal(np.bincount(ds["test"].labels),
                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])

  def test_missing_and_corrupt_dirs(self):
    with self.assertRaisesRegex(data.DataError, "does not exist"):
      data.load_mnist("idx", "/no/such/dir")
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(data.DataError, "lacks IDX files"):
      data.load_mnist("idx", empty)
    bad = self.create_tempdir().full_path
    for stem in data.mnist.IDX_FILES.values():
      with gzip.open(os.path.join(bad, stem + ".gz"), "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") * 3 + b"\x00" * 7)
    with self.assertRaisesRegex(data.DataError, "truncated or corrupt"):
      data.load_mnist("idx", bad)


def _run_script(*args):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)


class ScriptsTest(chex.TestCase):

  def test_missing_data_dir_is_one_line(self):
    out = _run_script("scripts/train.py", "--config=configs/mnist_oneshot.py",
                      "--config.data.dir=/no/such/dir", f"--workdir={self.create_tempdir()}")
    self.assertEqual(out.returncode, 1)
    self.assertEqual(out.stderr.strip().splitlines(),
                     ["error: MNIST data dir '/no/such/dir' does not exist"])

  @pytest.mark.slow
  @needs_mnist
  def test_prune_eval_writes_results(self):
    wd = self.create_tempdir().full_path
    out = _run_script("scripts/prune_eval.py", "--config=configs/mnist_oneshot.py",
                      f"--config.data.dir={MNIST_DIR}", f"--workdir={wd}",
                      "--config.train.steps=500", "--config.train.chunk_steps=250",
                      "--config.sweep.alphas=(1.0,3.0)", "--config.prune.num_keep_fractions=5")
    self.assertEqual(out.returncode, 0, msg=out.stderr[-2000:])
    rows = json.load(open(os.path.join(wd, "results.json")))
    self.assertEqual(len(rows), 10)
    self.assertEqual({r["alpha"] for r in rows}, {1.0, 3.0})
    self.assertTrue({"alpha", "seed", "keep_fraction", "accuracy"} <= set(rows[0]))
    dense = [r for r in rows if r["keep_fraction"] == 1.0]
    self.assertTrue(all(r["accuracy"] > 0.85 for r in dense))
    self.assertGreater(os.path.getsize(os.path.join(wd, "accuracy_vs_weights_remaining.png")),
                       10_000)
    self.assertEqual(open(os.path.join(wd, "results.csv")).readline().strip(),
                     "alpha,seed,keep_fraction,weights_remaining,accuracy")
