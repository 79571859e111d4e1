"""The CIFAR-10 network on real images (../shared/data/cifar10_jpeg_subset.npz): a short CPU
run through the same augmentation, model and loop trains well above chance for alpha = 1 and
alpha = 2, and scripts/prune_eval.py writes the one-shot pruning curve as for MNIST."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NPZ = os.path.join(ROOT, "..", "shared", "data", "cifar10_jpeg_subset.npz")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(NPZ), reason="shared CIFAR-10 subset not present")
def test_short_run_well_above_chance_and_pruning_curve(tmp_path):
  """Width-0.25 net, 200 steps of batch 32 (0.7 epoch of the 9k subset) per alpha."""
  out = subprocess.run(
      [sys.executable, "scripts/prune_eval.py", "--config=configs/cifar10_oneshot.py",
       f"--workdir={tmp_path}", "--config.model.width=0.25", "--config.train.steps=200",
       "--config.train.batch_size=32", "--config.train.log_every=100",
       "--config.train.eval_every=0", "--config.train.checkpoint_every=200",
       "--config.optimizer.learning_rate=0.05", "--config.prune.num_keep_fractions=6"],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.load(open(tmp_path / "results.json"))
  dense = {r["alpha"]: r["accuracy"] for r in rows if r["keep_fraction"] == 1.0}
  print(dense)
  assert set(dense) == {1.0, 2.0}
  assert min(dense.values()) > 0.3, dense  # chance is 0.1
  assert len(rows) == 2 * 6
  assert os.path.getsize(tmp_path / "accuracy_vs_weights_remaining.png") > 10_000
  assert (tmp_path / "results.csv").read_text().startswith("alpha,seed,keep_fraction,")
