"""configs/imagenet_resnet50.py against the published recipes, and scripts/reproduce.py.

The published values below are written out from PAPER.md section 4 and the papers it cites,
independently of the config module (nothing here is imported from it but the row's config
itself and the provisional POWERPROP_ALPHA, which no paper publishes).
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import jax
import numpy as np
import pytest

from powerprop_jax import optim
from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import train
from powerprop_jax.sparsity import base as sparse_base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
reproduce = config_lib.load_module(os.path.join(REPO, "scripts", "reproduce.py"), "reproduce")
MNIST_DIR = os.path.join(REPO, "..", "shared", "data", "mnist")

# ---- The published recipes (PAPER.md section 4; Top-KAST, RigL papers and official code) ----
IMAGENET_TRAIN_IMAGES = 1_281_167
PUBLISHED_TOP1 = {"dense": 76.8, "topkast80": 75.03, "topkast90": 73.03, "topkast95": 70.42,
                  "rigl80_1x": 75.12, "rigl90_1x": 73.07,
                  "rigl80_5x": 77.17, "rigl90_5x": 76.42, "rigl95_5x": 74.63}
# row -> (method, forward sparsity, Top-KAST backward sparsity, training multiplier)
BASELINE_ROWS = {
    "dense": ("none", 0.0, None, 1),
    "topkast80": ("topkast", 0.80, 0.50, 1),
    "topkast90": ("topkast", 0.90, 0.80, 1),
    "topkast95": ("topkast", 0.95, 0.90, 1),
    "rigl80_1x": ("rigl", 0.80, None, 1),
    "rigl90_1x": ("rigl", 0.90, None, 1),
    "rigl95_1x": ("rigl", 0.95, None, 1),
    "rigl80_5x": ("rigl", 0.80, None, 5),
    "rigl90_5x": ("rigl", 0.90, None, 5),
    "rigl95_5x": ("rigl", 0.95, None, 5),
    "gmp80": ("gradual", 0.80, None, 1),
    "gmp90": ("gradual", 0.90, None, 1),
    "gmp95": ("gradual", 0.95, None, 1),
}
ALL_ROWS = [r for b in BASELINE_ROWS for r in (b, b + "_pp")]
STEPS_1X, BATCH = 32_000, 4096
LR = 0.1 * BATCH / 256            # 0.1 per 256 images
WARMUP_EPOCHS, DECAY_EPOCHS = 5, (30, 70, 90)
# Gradual pruning at 1x: RigL's ImageNet pruning baseline as the RigL authors' jaxpruner
# config encodes it (start 10k, end 25k, every 1k steps at batch 4096).
GMP_WINDOW = (10_000, 25_000, 1_000)

MODULE = reproduce.load_imagenet_module()


def _baseline(row: str) -> str:
  return row[:-3] if row.endswith("_pp") else row


def _steps_of_epochs(epochs: float) -> float:
  return epochs * IMAGENET_TRAIN_IMAGES / BATCH


@pytest.mark.parametrize("row", ALL_ROWS)
def test_row_matches_published_recipe(row):
  c = MODULE.get_config(row)
  train.check_config(c)
  method, level, backward, mult = BASELINE_ROWS[_baseline(row)]
  steps = STEPS_1X * mult
  if row.endswith("_pp"):
    assert c.alpha == MODULE.POWERPROP_ALPHA and c.alpha > 1
  else:
    assert c.alpha == 1.0
  assert (c.data.name, c.data.image_size) == ("imagenet2012", 224)
  assert (c.model.name, c.model.num_classes, c.model.compute_dtype) == (
      "resnet50", 1000, "bfloat16")
  assert (c.train.steps, c.train.batch_size, c.train.chunk_steps) == (steps, BATCH, 1)
  assert c.train.eval_batch_size >= 1 and c.train.label_smoothing == 0.1
  assert 0 < c.train.checkpoint_every <= steps and 0 < c.train.eval_every <= steps

  o = c.optimizer
  assert (o.name, o.momentum, o.nesterov, o.schedule) == ("sgd", 0.9, True, "piecewise")
  assert o.learning_rate == pytest.approx(LR) and o.weight_decay == pytest.approx(1e-4)
  assert o.weight_decay_kernels_only   # not biases or batch norm (RigL's official code)
  assert o.decay_factor == pytest.approx(0.1)
  # Nx stretches the epochs of the schedule together with the steps.
  assert abs(o.warmup_steps - _steps_of_epochs(WARMUP_EPOCHS * mult)) <= 1
  assert len(o.boundaries) == len(DECAY_EPOCHS)
  for b, epoch in zip(o.boundaries, DECAY_EPOCHS):
    assert abs(b * steps - _steps_of_epochs(epoch * mult)) <= 1, (b, epoch)

  s = c.sparsity
  assert s.method == method and s.level == pytest.approx(level)
  if method == "topkast":
    assert s.backward_level == pytest.approx(backward)
    assert (s.distribution, s.dense_layers) == ("uniform", "first,last")
    assert s.penalty == pytest.approx(1e-4)     # lambda = the weight decay
    assert s.update_every == 1                  # A and B recomputed every step
    assert s.end_step in (0, steps)             # ... for the whole run
  elif method == "rigl":
    assert s.distribution == "erk" and s.dense_layers == "first"
    # the official maskupdate_end_step, 25,000 at 1x, stretched by the multiplier
    assert (s.begin_step, s.end_step, s.update_every) == (0, 25_000 * mult, 100)
    assert s.drop_fraction == pytest.approx(0.3)
  elif method == "gradual":
    assert s.distribution == "uniform"
    assert (s.begin_step, s.end_step, s.update_every) == GMP_WINDOW


def test_published_table_and_rows():
  assert MODULE.PUBLISHED == PUBLISHED_TOP1
  assert sorted(MODULE.ROWS) == sorted(ALL_ROWS)
  assert MODULE.get_config("").sparsity.method == "none"   # no ':ROW' -> dense
  with pytest.raises(ValueError, match="unknown row 'topkast85'"):
    MODULE.get_config("topkast85")


@pytest.mark.parametrize("row", ["dense", "rigl90_5x"])
def test_learning_rate_warmup(row):
  c = MODULE.get_config(row)
  lr = optim.learning_rate_schedule(c.optimizer, c.train.steps)
  warmup = c.optimizer.warmup_steps
  assert float(lr(0)) == 0.0
  assert float(lr(warmup // 2)) == pytest.approx(LR / 2, rel=1e-3)
  assert float(lr(warmup + 1)) == pytest.approx(LR, rel=1e-6)


@pytest.mark.parametrize("row", ["dense", "rigl90_5x"])
def test_learning_rate_decays_at_published_epochs(row):
  c = MODULE.get_config(row)
  mult = BASELINE_ROWS[_baseline(row)][3]
  lr = optim.learning_rate_schedule(c.optimizer, c.train.steps)
  for i, epoch in enumerate(DECAY_EPOCHS):
    at = _steps_of_epochs(epoch * mult)
    assert float(lr(math.floor(at) - 2)) == pytest.approx(LR * 0.1 ** i, rel=1e-5), epoch
    assert float(lr(math.ceil(at) + 2)) == pytest.approx(LR * 0.1 ** (i + 1), rel=1e-5), epoch


def _masks_by_layer(exp):
  sparse = sparse_base.find_sparse_state(exp.init_state.opt_state)
  if sparse is None:
    return None, None
  get = lambda tree: {m: np.asarray(v["w"]) for m, v in jax.device_get(tree).items()  # noqa
                      if "w" in v and np.ndim(v["w"]) > 1}
  return get(sparse.masks), get(sparse.grad_masks)


def _check_built(row, exp, first_dense=True):
  method, level, backward, _ = BASELINE_ROWS[_baseline(row)]
  forward, grads = _masks_by_layer(exp)
  if method == "none":
    assert forward is None
    return
  first, last = exp.layer_order[0], exp.layer_order[-1]
  assert forward[first].all() or not first_dense, "first layer must stay dense"
  density = lambda m: m.mean()  # noqa: E731
  if method == "topkast":
    assert forward[last].all(), "last layer must stay dense"
    for name, m in forward.items():
      if name not in (first, last):
        assert abs(density(m) - (1 - level)) <= 1 / m.size + 1e-9, name
        assert abs(density(grads[name]) - (1 - backward)) <= 1 / m.size + 1e-9, name
  elif method == "rigl":
    total = sum(m.size for m in forward.values())
    kept = sum(int(m.sum()) for m in forward.values())
    assert abs(kept / total - (1 - level)) <= 1e-3
  elif method == "gradual":
    assert all(m.all() for m in forward.values())   # pruning starts at step 10,000


@pytest.mark.slow
@pytest.mark.parametrize("row", ALL_ROWS)
def test_row_builds_its_experiment(row):
  """Optimizer and sparsity method of every row (a 10-layer ResNet stands in for speed)."""
  overrides = {"model.name": "resnet_tiny"}
  if row.startswith("rigl95"):
    # The stand-in's 7x7x3x64 stem alone is 6% of its weights: ERK at 95% cannot keep it
    # dense (ResNet-50's stem is 0.04%; test_resnet50_row_builds checks that case).
    overrides["sparsity.dense_layers"] = ""
  config = reproduce.with_overrides(MODULE.get_config(row), overrides)
  exp = train.build_experiment(config, np.zeros((1, 32, 32, 3), np.float32))
  _check_built(row, exp, first_dense=not row.startswith("rigl95"))


@pytest.mark.slow
def test_resnet50_row_builds():
  exp = train.build_experiment(MODULE.get_config("rigl95_5x_pp"),
                               np.zeros((1, 32, 32, 3), np.float32))
  assert exp.layer_order[0].endswith("initial_conv") and exp.layer_order[-1].endswith("logits")
  _check_built("rigl95_5x_pp", exp)


# ---- scripts/reproduce.py ----


def test_budget_overrides_scale_every_step_field():
  c = MODULE.get_config("rigl90_5x")
  o = reproduce.budget_overrides(c, 1600)       # 1% of 160,000
  assert o == {"train.steps": 1600, "optimizer.warmup_steps": round(0.01 * 7819.7),
               "sparsity.end_step": 1250}   # 1% of RigL's 125,000 (25,000 x 5)
  g = reproduce.budget_overrides(MODULE.get_config("gmp90"), 3200)
  assert (g["sparsity.begin_step"], g["sparsity.end_step"]) == (1000, 2500)
  short = reproduce.with_overrides(c, reproduce.budget_overrides(c, 2))
  train.check_config(short)
  assert reproduce.sweep_command("continual", "W", "D", steps=50)[-1] == (
      "--config.continual.steps_per_task=50")
  assert reproduce.sweep_command("mnist", "W", "D", 300, (1.0,), (0, 1))[-3:] == [
      "--config.train.steps=300", "--config.sweep.alphas=(1.0,)", "--config.sweep.seeds=(0,1)"]


def test_dry_run_lists_every_row(tmp_path):
  lines = []
  rc = reproduce.main(["--table", "imagenet", "--dry-run", "--runs", "R",
                       "--data_dir", "/data/tfds", "--out", str(tmp_path)], log=lines.append)
  assert rc == 0
  commands = dict(line.split(": ", 1) for line in lines if not line.startswith("#"))
  assert sorted(commands) == sorted(ALL_ROWS)
  assert any(line.startswith("# input: data.workers=-1 (") and "microbatches" in line
             for line in lines)
  for row, cmd in commands.items():
    assert cmd == (f"python scripts/train.py --config=configs/imagenet_resnet50.py:{row} "
                   f"--workdir=R/imagenet/{row} --config.data.dir=/data/tfds")
  assert not os.listdir(tmp_path)      # a dry run writes nothing


def test_launch_prints_one_line_per_row():
  lines = []
  assert reproduce.main(["--table", "imagenet", "--launch", "--rows", "topkast90,rigl80_5x_pp"],
                        log=lines.append) == 0
  launch = [line for line in lines if not line.startswith("#")]
  assert len(launch) == 2 and all(line.endswith("--config.train.distributed=True")
                                  for line in launch)
  assert ":rigl80_5x_pp " in launch[1]
  assert any("every host" in line for line in lines if line.startswith("#"))


def test_unknown_row_exits_2_with_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "scripts/reproduce.py", "--table", "imagenet", "--rows",
       "topkast90,topkast85", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  err = proc.stderr.strip().splitlines()
  assert len(err) == 1 and "topkast85" in err[0] and "topkast90_pp" in err[0]
  assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def _fake_run(workdir, config, records):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def _read_csv(path):
  with open(path) as f:
    return {r["row"]: r for r in csv.DictReader(f)}


def test_collect_marks_unfinished_and_foreign_runs(tmp_path):
  runs = tmp_path / "runs" / "imagenet"
  final = STEPS_1X
  _fake_run(runs / "topkast90", MODULE.get_config("topkast90"),
            [{"step": 1000, "validation_accuracy": 0.2},
             {"step": final, "validation_accuracy": 0.73, "test_accuracy": 0.7310}])
  _fake_run(runs / "topkast90_pp", MODULE.get_config("topkast90_pp"),
            [{"step": 4000, "validation_accuracy": 0.3}, {"step": 4100, "train_loss": 3.0}])
  _fake_run(runs / "rigl80_1x", MODULE.get_config("rigl90_1x"),      # another row's run
            [{"step": final, "test_accuracy": 0.73}])
  (runs / "gmp80").mkdir()
  (runs / "gmp80" / "metrics.jsonl").write_text('{"step": 32000, "validation_accuracy": 0.7')
  lines = []
  rc = reproduce.main(["--table", "imagenet", "--runs", str(tmp_path / "runs"),
                       "--out", str(tmp_path / "out")], log=lines.append)
  assert rc == 0
  table = _read_csv(tmp_path / "out" / "reproduce_imagenet.csv")
  assert sorted(table) == sorted(ALL_ROWS)
  assert table["topkast90"]["status"] == "ok"
  assert float(table["topkast90"]["top1"]) == pytest.approx(73.10)
  assert float(table["topkast90"]["difference"]) == pytest.approx(73.10 - 73.03)
  assert table["topkast90_pp"]["status"] == "no final metric"
  assert table["topkast90_pp"]["top1"] == "" and table["topkast90_pp"]["difference"] == ""
  assert float(table["topkast90_pp"]["published_top1"]) == 73.03   # its baseline's number
  assert table["rigl80_1x"]["status"] == "other config" and table["rigl80_1x"]["top1"] == ""
  assert table["gmp80"]["status"] == "no final metric"     # a line cut short is no value
  assert table["dense"]["status"] == "not run"
  bad = [line for line in lines if line.split(":")[0] in ("topkast90_pp", "rigl80_1x", "gmp80")]
  assert len(bad) == 3 and "sparsity.level" in next(b for b in bad if "rigl80_1x" in b)
  md = (tmp_path / "out" / "reproduce_imagenet.md").read_text()
  assert "| topkast90 | Top-KAST 90/80 | 90% | 1 | 32000 | 73.03 | 73.10 | +0.07 |" in md
  assert "| rigl80_1x_pp |" in md and "not run" in md and "other config" in md


@pytest.mark.skipif(not hasattr(train, "run_experiment"),
                    reason="powerprop_jax.experiment.train.run_experiment (the training entry point "
                           "--smoke runs) does not exist in this checkout yet")
@pytest.mark.slow
def test_smoke_runs_every_row(tmp_path):
  # The budget is 5 minutes on 2 cores; other jobs share this machine's cores, so count the
  # CPU seconds of this process (compiling, the bulk of it, runs on one core) not wall time.
  t0, cpu0 = time.time(), time.process_time()
  rc = reproduce.main(["--table", "imagenet", "--smoke", "--runs", str(tmp_path / "runs"),
                       "--out", str(tmp_path / "out")], log=lambda msg: None)
  elapsed, cpu = time.time() - t0, time.process_time() - cpu0
  assert not (tmp_path / "out" / "reproduce_imagenet.csv").exists()  # not the real table
  table = _read_csv(tmp_path / "out" / "reproduce_imagenet_smoke.csv")
  assert sorted(table) == sorted(ALL_ROWS)
  failed = {r: v["status"] for r, v in table.items() if v["status"] != "smoke"}
  assert rc == 0 and not failed, failed
  assert "(smoke)" in (tmp_path / "out" / "reproduce_imagenet_smoke.md").read_text()
  assert all(0.0 <= float(v["top1"]) <= 100.0 for v in table.values())
  assert all(v["steps"] == str(reproduce.SMOKE_STEPS) for v in table.values())
  assert cpu < 300, f"smoke took {cpu:.0f} CPU s ({elapsed:.0f} s wall)"


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason=f"no MNIST data at {MNIST_DIR}")
@pytest.mark.slow
def test_mnist_table_equals_prune_eval_results(tmp_path):
  rc = reproduce.main(["--table", "mnist", "--steps", "300", "--alphas", "1,2",
                       "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
                      log=lambda msg: None)
  assert rc == 0
  with open(tmp_path / "runs" / "mnist" / "results.json") as f:
    rows = json.load(f)
  # Every training run of the sweep stopped at the --steps budget.
  metrics = glob.glob(str(tmp_path / "runs" / "mnist" / "**" / "metrics.jsonl"), recursive=True)
  assert len(metrics) == 2
  for path in metrics:
    with open(path) as f:
      assert json.loads(f.read().strip().splitlines()[-1])["step"] == 300
  groups = defaultdict(list)
  for r in rows:
    groups[(r["keep_fraction"], r["alpha"])].append(r["accuracy"])
  assert {a for _, a in groups} == {1.0, 2.0}
  with open(tmp_path / "out" / "reproduce_mnist.csv") as f:
    table = list(csv.DictReader(f))
  assert len(table) == len(groups)
  for t in table:
    values = groups[(float(t["keep_fraction"]), float(t["alpha"]))]
    assert float(t["mean"]) == pytest.approx(np.mean(values), abs=1e-12)
    assert float(t["std"]) == pytest.approx(np.std(values), abs=1e-12)
    assert int(t["n"]) == len(values) == 1
  md = (tmp_path / "out" / "reproduce_mnist.md").read_text()
  dense = {a: np.mean(v) for (k, a), v in groups.items() if k == 1.0}
  assert f"| 100.00% | {dense[1.0]:.4f} | {dense[2.0]:.4f} |" in md


CHILD = r'''
import os, signal, sys, time
marker = sys.argv[1]
def stop(signum, frame):
  open(marker, "a").write("saved\n")
  sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(marker, "w").write("started\n")
time.sleep(60)
open(marker, "a").write("finished\n")
'''


def test_a_sigterm_is_passed_to_the_row_and_no_further_row_starts(tmp_path, monkeypatch):
  """--rows runs train.py per row: a scheduler's SIGTERM to reproduce.py reaches the running
  row (which saves and exits 0), and reproduce.py exits 0 without starting the next row."""
  monkeypatch.setattr(reproduce, "row_command", lambda row, *a, **k: [
      sys.executable, "-c", CHILD, str(tmp_path / f"{row}.marker")])

  def signal_once_started():
    while not (tmp_path / "dense.marker").exists():
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
  threading.Thread(target=signal_once_started, daemon=True).start()
  lines = []
  t0 = time.time()
  rc = reproduce.main(["--table", "imagenet", "--rows", "dense,topkast80", "--runs",
                       str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
                      log=lines.append)
  assert rc == 0 and time.time() - t0 < 30
  assert (tmp_path / "dense.marker").read_text() == "started\nsaved\n"
  assert not (tmp_path / "topkast80.marker").exists()
  assert any(line.startswith("preempted: dense saved its checkpoint") for line in lines), lines
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # the handler is put back


@pytest.mark.parametrize("flag", ["--runs", "--out"])
def test_unreachable_runs_or_out_is_one_line_before_any_work(tmp_path, flag, capsys):
  """An object store that cannot be reached (here: no backend for the protocol) is refused
  in one line at start-up; nothing local is made in its place."""
  argv = ["--table", "imagenet", "--runs", str(tmp_path / "runs"), "--out",
          str(tmp_path / "out"), flag, "nosuchstore://bucket/x"]
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    rc = reproduce.main(argv, log=lambda m: None)
  finally:
    os.chdir(cwd)
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1, err
  assert err[0].startswith(f"error: {flag} nosuchstore://bucket/x cannot be reached")
  assert sorted(os.listdir(tmp_path)) == []


def test_a_sigterm_during_a_small_table_writes_no_table(tmp_path, monkeypatch):
  """The small tables run one sweep script: stopped by a SIGTERM (passed on; the script saves
  and exits 0), its half-done sweep is not made into a table."""
  marker = tmp_path / "mnist.marker"
  monkeypatch.setattr(reproduce, "sweep_command",
                      lambda *a, **k: [sys.executable, "-c", CHILD, str(marker)])

  def signal_once_started():
    while not marker.exists():
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
  threading.Thread(target=signal_once_started, daemon=True).start()
  lines = []
  rc = reproduce.main(["--table", "mnist", "--runs", str(tmp_path / "runs"), "--out",
                       str(tmp_path / "out")], log=lines.append)
  assert rc == 0 and marker.read_text() == "started\nsaved\n"
  assert any(line.startswith("preempted: mnist saved its checkpoint") for line in lines), lines
  assert not glob.glob(str(tmp_path / "out" / "reproduce_mnist.*"))
