"""Continual learning: ownership bookkeeping, task streams, PackNet/EfficientPackNet.

The integration tests train short Permuted-MNIST streams on the real data in
../shared/data/mnist beside the repository (skipped if it is absent; nothing is downloaded).
"""

import os
import sys

import jax
import numpy as np
import pytest

from powerprop_jax.experiment import config as config_lib
from powerprop_jax import masks, transform
from powerprop_jax.experiment import data, train
from powerprop_jax.continual import assignment, packnet, tasks
from powerprop_jax.experiment import continual

continual_pmnist = config_lib.load_module(
    os.path.join(os.path.dirname(__file__), "..", "configs", "continual_pmnist.py"))

MNIST_DIR = os.environ.get("MNIST_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                     "..", "..", "shared", "data", "mnist"))


def _params():
  return {"mlp/~/linear_0": {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)},
          "mlp/~/linear_1": {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}}


def _leaf(tree, layer, name):
  return np.asarray(tree[f"mlp/~/linear_{layer}"][name])


# ---------------------------------------------------------------- bookkeeping (no data)

def test_assign_disjoint_and_masks():
  owners = assignment.init_owners(_params())
  keep0 = jax.tree_util.tree_map(lambda p: np.zeros(p.shape, bool), _params())
  keep0["mlp/~/linear_0"]["w"][0, :] = True
  owners = assignment.assign(owners, keep0, 0)
  assert (_leaf(owners, 0, "w")[0] == 1).all() and (_leaf(owners, 0, "w")[1:] == 0).all()
  assert (_leaf(owners, 0, "b") == 1).all()  # biases go to task 0 as a whole
  keep1 = jax.tree_util.tree_map(lambda p: np.zeros(p.shape, bool), _params())
  keep1["mlp/~/linear_0"]["w"][1, :] = True
  owners = assignment.assign(owners, keep1, 1)
  fwd, grad = assignment.train_masks(owners, 2)
  assert _leaf(grad, 0, "w")[2:].all() and not _leaf(grad, 0, "w")[:2].any()
  assert not _leaf(grad, 0, "b").any()  # biases frozen after task 0
  assert _leaf(fwd, 0, "w").all()
  e0 = assignment.eval_mask(owners, 0, 2)
  np.testing.assert_array_equal(_leaf(e0, 0, "w"), _leaf(owners, 0, "w") == 1)
  e1 = assignment.eval_mask(owners, 1, 2)
  np.testing.assert_array_equal(_leaf(e1, 0, "w"), _leaf(owners, 0, "w") >= 1)
  assert _leaf(e1, 0, "b").all()
  # 3 of 18 prunable weights per task.
  np.testing.assert_allclose(assignment.capacity_used(owners, 3), [3 / 18, 3 / 18, 0.0])


def test_assign_refuses_owned_weights():
  owners = assignment.init_owners(_params())
  keep = jax.tree_util.tree_map(lambda p: np.ones(p.shape, bool), _params())
  owners = assignment.assign(owners, keep, 0)
  with pytest.raises(ValueError, match="already owned"):
    assignment.assign(owners, keep, 1)


def test_eval_task_out_of_range():
  owners = assignment.init_owners(_params())
  with pytest.raises(ValueError, match=r"\[0, 2\)"):
    assignment.eval_mask(owners, 2, 2)
  with pytest.raises(ValueError, match=r"\[0, 2\)"):
    assignment.eval_mask(owners, -1, 2)


def test_permutations_seeded():
  a, b = tasks.permutations(3, 784, seed=0), tasks.permutations(3, 784, seed=0)
  np.testing.assert_array_equal(a[0].permutation, np.arange(784))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.permutation, y.permutation)
  assert not np.array_equal(a[1].permutation, a[2].permutation)
  assert sorted(a[1].permutation.tolist()) == list(range(784))
  images = np.random.default_rng(0).random((2, 784)).astype(np.float32)
  out = tasks.permute(data.Dataset(images, np.zeros(2, np.int32)), a[1])
  np.testing.assert_array_equal(out.images[:, 5], images[:, a[1].permutation[5]])


@pytest.mark.parametrize("field,value,match", [
    ("gamma", 0.0, "gamma"), ("gamma", 1.5, "gamma"), ("method", "ewc", "method"),
    ("prune_fraction", 1.0, "prune_fraction"), ("num_tasks", 0, "num_tasks"),
    ("scope", "rows", "scope")])
def test_config_errors(field, value, match):
  config = continual_pmnist.get_config()
  config.continual[field] = value
  with pytest.raises(ValueError, match=match):
    continual.check_config(config.continual)


def test_keep_fn_layerwise_and_global():
  w = {"a": {"w": np.array([[3.0, -1.0], [2.0, 0.5]])}, "b": {"w": np.array([[10.0, 0.1]])}}
  cand = {"a": {"w": np.array([[True, True], [False, True]])}, "b": {"w": np.ones((1, 2), bool)}}
  lw = masks.magnitude_masks(w, 0.5, "layerwise", transform.weights_only, cand)
  # layer a: round(0.5 * 3) = 2 of the candidates {3, -1, 0.5}; the non-candidate 2 never.
  np.testing.assert_array_equal(lw["a"]["w"], [[True, True], [False, False]])
  np.testing.assert_array_equal(lw["b"]["w"], [[True, False]])
  gl = masks.magnitude_masks(w, 0.5, "global", transform.weights_only, cand)
  # round(0.5 * 5) = 2 over all candidates: 10 and 3.
  np.testing.assert_array_equal(gl["a"]["w"], [[True, False], [False, False]])
  np.testing.assert_array_equal(gl["b"]["w"], [[True, False]])


# ---------------------------------------------------------------- real Permuted MNIST

@pytest.fixture(scope="module")
def mnist():
  if not os.path.isdir(MNIST_DIR):
    pytest.skip(f"no MNIST IDX files at {MNIST_DIR}")
  return data.load_mnist("idx", MNIST_DIR)


def _config(**continual):
  config = continual_pmnist.get_config()
  config.continual.update(continual)
  return config


@pytest.fixture(scope="module")
def packnet_run(mnist):
  config = _config(method="packnet", num_tasks=3, steps_per_task=300, finetune_steps=100,
                   prune_fraction=0.5)
  config.alpha = 2.0
  return continual.run_continual(config, mnist, log=lambda _: None)


def test_packnet_frozen_weights_bit_identical(packnet_run):
  r = packnet_run
  final = r.params_after_task[-1]
  for t in range(2):
    owned = r.owners_after_task[t]
    for p_t, p_n, o in zip(jax.tree_util.tree_leaves(r.params_after_task[t]),
                           jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(owned)):
      sel = np.asarray(o) >= 1
      assert sel.any()
      np.testing.assert_array_equal(np.asarray(p_t)[sel], np.asarray(p_n)[sel])


def test_packnet_accuracy_of_old_tasks_unchanged(packnet_run):
  acc = packnet_run.acc
  assert acc[0, 0] > 0.8 and acc[1, 1] > 0.8 and acc[2, 2] > 0.8
  assert acc[2, 0] == acc[0, 0] and acc[1, 0] == acc[0, 0] and acc[2, 1] == acc[1, 1]
  assert np.isnan(acc[0, 1])


def test_packnet_masks_disjoint_and_from_free(packnet_run):
  r = packnet_run
  chosen = jax.tree_util.tree_leaves(transform.selected(r.owners, transform.weights_only))
  prev = None
  for t, owners in enumerate(r.owners_after_task):
    for i, (o, c) in enumerate(zip(jax.tree_util.tree_leaves(owners), chosen)):
      o = np.asarray(o)
      if not c:
        continue
      new = o == t + 1
      if prev is not None:
        p = np.asarray(jax.tree_util.tree_leaves(prev)[i])
        assert (p[new] == 0).all()                       # taken only from free weights
        np.testing.assert_array_equal(o[p != 0], p[p != 0])  # earlier owners unchanged
      # PackNet keeps round(0.5 * n_free) per layer.
      n_free = o.size if prev is None else int((np.asarray(
          jax.tree_util.tree_leaves(prev)[i]) == 0).sum())
      assert new.sum() == round(0.5 * n_free)
    prev = owners
  np.testing.assert_allclose(r.capacity, [0.5, 0.25, 0.125], atol=2e-3)


def test_capacity_exhausted_raises(mnist):
  small = {k: data.Dataset(v.images[:2000], v.labels[:2000]) for k, v in mnist.items()}
  config = _config(method="efficient_packnet", num_tasks=2, steps_per_task=20,
                   finetune_steps=0, gamma=1.0, min_keep_fraction=1.0, num_keep_fractions=1)
  with pytest.raises(ValueError, match="no free weights left for task 1"):
    continual.run_continual(config, small, log=lambda _: None)


@pytest.mark.slow
def test_efficient_packnet_powerprop_uses_less_capacity(mnist):
  """EfficientPackNet at gamma 0.99: alpha 2 needs less total capacity than alpha 1 for the
  same 3 tasks (mean over seeds 0 and 1). Measured: 0.588 vs 0.661 total capacity; average
  final accuracy 0.929 vs 0.957 (alpha 2 trains slower in 1,500 steps)."""
  totals, avg = {}, {}
  for alpha in (1.0, 2.0):
    caps, accs = [], []
    for seed in (0, 1):
      config = _config(method="efficient_packnet", num_tasks=3, steps_per_task=1500,
                       finetune_steps=200, gamma=0.99)
      config.alpha, config.seed = alpha, seed
      r = continual.run_continual(config, mnist, log=lambda _: None)
      caps.append(sum(r.capacity))
      accs.append(packnet.average_accuracy(r.acc))
    totals[alpha], avg[alpha] = np.mean(caps), np.mean(accs)
  print(f"total capacity {totals}, average accuracy {avg}")
  assert totals[2.0] < totals[1.0]
  assert avg[2.0] > 0.9 and avg[1.0] > 0.9


def test_diverging_stream_stops_at_the_first_non_finite_loss(mnist):
  """A too-large lr stops the task with TrainingDiverged naming the step, before pruning
  meets NaN weights."""
  small = {k: data.Dataset(v.images[:2000], v.labels[:2000]) for k, v in mnist.items()}
  config = _config(method="efficient_packnet", num_tasks=1, steps_per_task=100,
                   finetune_steps=0)
  config.train.chunk_steps = 10
  config.optimizer.learning_rate = 1e4
  with pytest.raises(train.TrainingDiverged,
                     match=r"^task 0: loss became (nan|inf) at step \d+; stopped"):
    continual.run_continual(config, small, log=lambda _: None)


def test_checkpoint_resume_reproduces_run(mnist, tmp_path):
  """A rerun in the same workdir restores after the last task: same owners, params, accuracies."""
  small = {k: data.Dataset(v.images[:3000], v.labels[:3000]) for k, v in mnist.items()}
  config = _config(method="packnet", num_tasks=2, steps_per_task=50, finetune_steps=10)
  first = continual.run_continual(config, small, str(tmp_path), log=lambda _: None)
  logs = []
  again = continual.run_continual(config, small, str(tmp_path), log=logs.append)
  assert logs == [f"resumed after task 1 from {tmp_path}"]
  np.testing.assert_array_equal(first.acc, again.acc)
  for a, b in zip(jax.tree_util.tree_leaves((first.params, first.owners)),
                  jax.tree_util.tree_leaves((again.params, again.owners))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------- the script

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _run_script(*args):
  import subprocess  # pylint: disable=g-import-not-at-top
  return subprocess.run([sys.executable, "scripts/continual.py",
                         "--config=configs/continual_pmnist.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def test_script_bad_gamma_is_one_line(tmp_path):
  out = _run_script("--config.continual.gamma=1.5", f"--workdir={tmp_path}")
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == ["error: continual.gamma must be in (0, 1], got 1.5"]


@pytest.mark.slow
def test_script_writes_results(mnist, tmp_path):
  """2 tasks x 100 steps, gamma 0.9, alpha 1 and 3: results.json/csv and the plot are written."""
  import json  # pylint: disable=g-import-not-at-top
  out = _run_script(f"--config.data.dir={MNIST_DIR}", f"--workdir={tmp_path}",
                    "--config.continual.num_tasks=2", "--config.continual.steps_per_task=100",
                    "--config.continual.finetune_steps=20", "--config.train.chunk_steps=100",
                    "--config.continual.num_keep_fractions=5", "--config.continual.gamma=0.9",
                    "--config.sweep.alphas=(1.0,3.0)")
  assert out.returncode == 0, out.stderr[-2000:]
  runs = json.load(open(tmp_path / "results.json"))
  assert [(r["alpha"], r["seed"]) for r in runs] == [(1.0, 0), (3.0, 0)]
  for r in runs:
    assert r["acc"][0][1] is None and r["acc"][1][0] == r["acc"][0][0]
    assert len(r["capacity_used"]) == 2 and 0 < r["total_capacity"] <= 1
    np.testing.assert_allclose(r["average_accuracy"], np.mean(r["acc"][1]))
  assert open(tmp_path / "results.csv").readline().startswith("alpha,seed,method,task,")
  assert os.path.getsize(tmp_path / "capacity_and_accuracy.png") > 10_000
  assert "task 1:" in out.stdout


def test_efficient_packnet_picks_the_sparsest_fraction_meeting_gamma():
  """Algorithm 1: the first (sparsest) grid point with P_s >= gamma * P, not a neighbour."""
  grid = masks.keep_fractions(0.01, 25)
  accuracy = dict(zip(grid, np.linspace(0.5, 0.99, 25)))  # rises with the fraction kept
  target = 0.99 * 0.95
  want = min(f for f in grid if accuracy[f] >= target)
  got, acc = packnet.choose_keep_fraction(grid, lambda f: accuracy[f], target)
  assert got == want and acc == accuracy[want]
  assert accuracy[grid[list(grid).index(want) - 1]] < target  # one step sparser fails gamma
  got, _ = packnet.choose_keep_fraction(grid, lambda f: 0.0, target)
  assert got == grid[-1]  # nothing meets gamma: keep everything
