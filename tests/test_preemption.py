"""Preemption: a real SIGTERM to a training process makes it save a checkpoint at the step it
reached and exit 0; rerunning it resumes to the params of an uninterrupted run. Also the
profiler hook and the compilation cache."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from powerprop_jax.checks import ConfigError
from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import data, preemption, sweep, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 400

WORKER = r'''
import sys
import jax
import numpy as np
from powerprop_jax.experiment import config as config_lib, data, preemption, train
workdir, out = sys.argv[1], sys.argv[2]
c = config_lib.base()
c.alpha = 2.0
c.train.update({"steps": %d, "batch_size": 20, "chunk_steps": 1, "log_every": 20,
                "eval_every": 0, "checkpoint_every": 0, "compilation_cache": sys.argv[3]})
c.optimizer.update({"momentum": 0.9, "learning_rate": 0.05})
c.sparsity.update({"method": "rigl", "level": 0.8, "update_every": 10})
try:
  state, _ = train.train_and_evaluate(c, workdir, data.prototype_digits(200, 50, seed=0, dim=32),
                                      log=lambda m: print(m, flush=True))
except preemption.Preempted as stop:   # not a result: the state saved at the stop
  state = stop.state
np.savez(out, step=np.asarray(state.step), *jax.tree_util.tree_leaves(jax.device_get(state.params)))
''' % STEPS


def _start(workdir, out, cache=""):
  return subprocess.Popen([sys.executable, "-c", WORKER, str(workdir), str(out), str(cache)],
                          cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc):
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  return out


@pytest.mark.slow
def test_sigterm_saves_and_the_rerun_resumes_exactly(tmp_path):
  cache = tmp_path / "xla_cache"
  straight = _finish(_start(tmp_path / "a", tmp_path / "a.npz"))
  proc = _start(tmp_path / "b", tmp_path / "b1.npz", cache)
  lines = []
  for line in proc.stdout:   # the first log line: training is under way
    lines.append(line)
    if line.startswith("step 20/"):
      proc.send_signal(signal.SIGTERM)
      break
  out = "".join(lines) + _finish(proc)
  stopped = int(np.load(tmp_path / "b1.npz")["step"])
  assert 20 <= stopped < STEPS and f"preempted: stopped at step {stopped} of {STEPS}" in out
  assert os.path.isdir(tmp_path / "b" / "checkpoints" / str(stopped))
  assert any(os.scandir(cache))   # the compiled step is cached for the rerun
  resumed = _finish(_start(tmp_path / "b", tmp_path / "b2.npz", cache))
  assert f"resumed from step {stopped}" in resumed, resumed[-2000:]
  a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b2.npz")
  assert int(b["step"]) == STEPS and "preempted" not in straight
  for key in a.files:
    np.testing.assert_array_equal(a[key], b[key])


def test_profile_traces_the_given_steps(tmp_path):
  c = config_lib.base()
  c.train.update({"steps": 6, "batch_size": 20, "chunk_steps": 1, "log_every": 0,
                  "eval_every": 0, "checkpoint_every": 0, "profile": "2:4"})
  train.train_and_evaluate(c, str(tmp_path), data.prototype_digits(100, 20, seed=0, dim=32),
                           log=lambda m: None)
  traces = [f for _, _, files in os.walk(tmp_path / "profile") for f in files
            if f.endswith((".xplane.pb", ".trace.json.gz"))]
  assert traces


@pytest.mark.parametrize("spec", ["5", "4:2", "a:b", "-1:3"])
def test_bad_profile_is_one_line(spec):
  with pytest.raises(ConfigError, match="train.profile must be '' or 'START:STOP'"):
    train.parse_profile(spec)


def test_a_preempted_sweep_cell_is_not_a_result(tmp_path):
  """SIGTERM in the middle of a sweep's cell: the cell's half-trained state reaches no caller
  as a result (no rows recorded), the sweep stops with Preempted (the scripts exit 0), and the
  rerun resumes that cell and ends with the rows of an uninterrupted sweep."""
  datasets = data.prototype_digits(200, 50, seed=0, dim=32)
  c = config_lib.base()
  c.train.update({"steps": 60, "batch_size": 20, "chunk_steps": 5, "log_every": 10,
                  "eval_every": 0, "checkpoint_every": 0})
  cells = sweep.grid(alpha=[1.0, 2.0])
  seen, signalled = [], []

  def cell(cfg, run_dir, _):   # like prune_eval: rows computed from the returned state
    def log(msg):
      seen.append(msg)
      if (msg.startswith("step 20/") and cfg.alpha == 2.0 and "stopped" in run_dir
          and not signalled):   # once, in the second cell of the interrupted sweep
        signalled.append(msg)
        os.kill(os.getpid(), signal.SIGTERM)
    state, _ = train.train_and_evaluate(cfg, run_dir, datasets, log=log)
    return [{"step": int(state.step), "w_sum": float(sum(
        np.abs(np.asarray(x)).sum() for x in jax.tree_util.tree_leaves(state.params)))}]

  straight = sweep.run(c, str(tmp_path / "straight"), cells, cell, log=lambda m: None)
  with pytest.raises(preemption.Preempted) as stop:
    sweep.run(c, str(tmp_path / "stopped"), cells, cell, log=lambda m: None)
  assert 20 <= stop.value.step < 60 and stop.value.steps == 60
  found = sweep.outcomes(c, str(tmp_path / "stopped"), cells)
  assert [o.state for o in found] == [sweep.FINISHED, sweep.MISSING]
  seen.clear()
  resumed = sweep.run(c, str(tmp_path / "stopped"), cells, cell, log=lambda m: None)
  assert any(m.startswith(f"resumed from step {stop.value.step}") for m in seen), seen[:3]
  assert resumed == straight and [r["step"] for r in resumed] == [60, 60]
