"""A finished run taken away: ``load_run`` on a real short MNIST RigL run gives the accuracy
the run reported, ``scripts/export.py`` writes a file that loads back bit for bit, and the
library's ``powerprop_jax.export`` stays free of the harness until ``load_run`` is used."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from powerprop_jax import export, masks, transform
from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import data, train
from powerprop_jax.experiment import export as run_export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(ROOT, "..", "shared", "data", "mnist")
pytestmark = pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="../shared/data absent")


def _config(method: str, alpha: float, level: float = 0.0):
  c = config_lib.load_module(os.path.join(ROOT, "configs", "mnist_oneshot.py")).get_config()
  c.alpha = alpha
  c.train.update({"steps": 300, "chunk_steps": 100, "log_every": 0, "eval_every": 0,
                  "checkpoint_every": 0})
  c.sparsity.update({"method": method, "level": level, "distribution": "erk",
                     "update_every": 50})
  return c


@pytest.fixture(scope="module")
def mnist():
  return data.load_mnist("idx", MNIST_DIR)


@pytest.fixture(scope="module")
def rigl_run(mnist, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("rigl"))
  train.train_and_evaluate(_config("rigl", 2.0, 0.9), workdir, mnist, log=lambda m: None)
  return workdir


def _accuracy(apply, params, dataset) -> float:
  logits = apply(params, jnp.asarray(dataset.images))
  return float(np.mean(np.argmax(np.asarray(logits), -1) == dataset.labels))


def test_load_run_gives_the_reported_accuracy_with_powerprop_baked_in(rigl_run, mnist):
  run = run_export.load_run(rigl_run)
  reported = json.loads(open(os.path.join(rigl_run, "metrics.jsonl")).readlines()[-1])
  assert run.step == 300 and run.config.alpha == 2.0 and run.config.sparsity.method == "rigl"
  assert _accuracy(run.apply, run.params, mnist["test"]) == reported["test_accuracy"]
  # The weights are w = masks * v|v|^(alpha - 1): 90% zeros exactly, as the run reported.
  assert masks.sparsity_of(jax.tree_util.tree_map(lambda x: x != 0, run.params)) == \
      pytest.approx(reported["sparsity"], abs=1e-4)
  # A plain network: running it through the library's transform again would be wrong.
  twice = transform.effective_params(run.params, 2.0)
  assert _accuracy(run.apply, twice, mnist["test"]) != reported["test_accuracy"]


def test_each_sparse_layer_density_is_logged(rigl_run):
  """metrics.jsonl carries density/<layer> for every sparse layer; weighted by the layers'
  sizes they give the run's overall sparsity, and ERK gives the small output layer more."""
  final = json.loads(open(os.path.join(rigl_run, "metrics.jsonl")).readlines()[-1])
  density = {k[len("density/"):]: v for k, v in final.items() if k.startswith("density/")}
  sizes = {"mlp/~/linear_0/w": 784 * 300, "mlp/~/linear_1/w": 300 * 100,
           "mlp/~/linear_2/w": 100 * 10}
  assert set(density) == set(sizes)
  kept = sum(density[k] * n for k, n in sizes.items()) / sum(sizes.values())
  assert kept == pytest.approx(1 - final["sparsity"], abs=1e-6)
  assert density["mlp/~/linear_2/w"] > density["mlp/~/linear_0/w"]


def test_export_script_writes_a_file_that_loads_back_exactly(rigl_run, tmp_path):
  out = tmp_path / "rigl.ppjx"
  proc = subprocess.run([sys.executable, "scripts/export.py", f"--workdir={rigl_run}",
                         f"--output={out}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert "dense" in lines[0] and "file" in lines[0] and "sparsity" in lines[0]
  assert sum("linear" in line and "sparsity" in line for line in lines[1:]) >= 3
  params, meta = export.load_sparse(out)
  run = run_export.load_run(rigl_run)
  chex.assert_trees_all_equal(params, run.params)
  assert meta["user"]["config"]["sparsity"]["method"] == "rigl"
  dense_bytes = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(run.params))
  assert os.path.getsize(out) < 0.3 * dense_bytes   # 90% sparse: far smaller than dense


def test_load_run_prunes_a_dense_run_at_a_keep_fraction(mnist, rigl_run, tmp_path):
  train.train_and_evaluate(_config("none", 4.0), str(tmp_path), mnist, log=lambda m: None)
  dense = run_export.load_run(str(tmp_path))
  assert dense.masks is None
  pruned = run_export.load_run(str(tmp_path), keep_fraction=0.1)
  kept = {name: 1 - s for name, s in run_export.layer_sparsity(pruned.params).items()}
  # Hidden layers keep 10%, the output layer (the last created) min(1, 2 * 10%).
  assert kept == pytest.approx({"mlp/~/linear_0/w": 0.1, "mlp/~/linear_1/w": 0.1,
                               "mlp/~/linear_2/w": 0.2},
                               abs=1e-3)
  with pytest.raises(ValueError, match="keep_fraction is for dense runs"):
    run_export.load_run(rigl_run, keep_fraction=0.1)
  with pytest.raises(ValueError, match="records no run"):
    run_export.load_run(str(tmp_path / "nothing"))


def test_library_export_does_not_import_the_harness():
  code = ("import sys, powerprop_jax.export as e; "
          "assert not any(m.startswith('powerprop_jax.experiment') for m in sys.modules); "
          "assert e.load_run.__module__ == 'powerprop_jax.experiment.export'; print('ok')")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.stdout.strip() == "ok", out.stderr[-2000:]
