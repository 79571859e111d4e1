"""Sparse training on the real MNIST (../shared/data/mnist): each method near its dense
counterpart at 90% sparsity, and Powerpropagation at least as good as alpha = 1 for Top-KAST and
RigL, averaged over two seeds. Short runs (STEPS steps, SGD lr 0.1, batch 60)."""

import copy
import os
import sys

import numpy as np
import pytest

from powerprop_jax import data, masks, sparsity, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(ROOT, "..", "shared", "data", "mnist")
sys.path.insert(0, os.path.join(ROOT, "configs"))
import mnist_sparse  # noqa: E402  pylint: disable=g-import-not-at-top

STEPS = 10_000
ALPHA = 2.0
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="../shared/data absent")]


@pytest.fixture(scope="module")
def datasets():
  return data.load_mnist("idx", MNIST_DIR)


def _test_accuracy(datasets, workdir, method, alpha, seed, level=0.9, **fields):
  config = copy.deepcopy(mnist_sparse.get_config())
  config.alpha, config.seed = alpha, seed
  config.train.steps, config.train.eval_every, config.train.log_every = STEPS, 0, 0
  config.train.checkpoint_every = 0
  config.sparsity.method, config.sparsity.seed = method, seed
  config.sparsity.level = level if method != "none" else 0.0
  config.sparsity.update(fields)
  state, exp = train.train_and_evaluate(config, str(workdir), datasets, log=lambda s: None)
  sparse = sparsity.find_sparse_state(state.opt_state)
  forward = None if sparse is None else sparse.masks
  if forward is not None:
    assert masks.sparsity_of(forward) == pytest.approx(level, abs=1e-5)
  return train.make_eval_fn(exp.model, exp.reparam)(state.params, state.net_state,
                                                     datasets["test"], forward)


def test_each_method_near_dense(datasets, tmp_path):
  dense = _test_accuracy(datasets, tmp_path / "dense", "none", 1.0, 0)
  assert dense > 0.97
  for method, fields in [("oneshot", {}), ("gradual", {"end_step": STEPS // 2}),
                         ("set", {})]:
    acc = _test_accuracy(datasets, tmp_path / method, method, 1.0, 0, **fields)
    print(method, acc)
    assert acc > dense - 0.03, (method, acc, dense)


@pytest.mark.parametrize("method,fields", [("topkast", {"backward_level": 0.8}),
                                           ("rigl", {})])
def test_powerprop_at_least_as_good(datasets, tmp_path, method, fields):
  accs = {a: [_test_accuracy(datasets, tmp_path / f"a{a}_s{s}", method, a, s, **fields)
              for s in (0, 1)] for a in (1.0, ALPHA)}
  print(method, accs)
  assert min(accs[1.0]) > 0.95, accs  # near the dense 0.97-0.98
  assert np.mean(accs[ALPHA]) >= np.mean(accs[1.0]) - 0.002, accs
