"""No silent wrong results: run identity, workdir lock, damaged checkpoints, metrics files."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tensorboardX.proto import event_pb2

from powerprop_jax.experiment import checkpoint
from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import metrics
from powerprop_jax.experiment import workdir as workdir_lib


# --- run identity -------------------------------------------------------------------------

def _recorded(tmp_path, **changes):
  config = config_lib.base()
  workdir_lib.record_run(str(tmp_path), config.to_dict())
  new = config_lib.base()
  for key, value in changes.items():
    section, _, field = key.rpartition(".")
    (new[section] if section else new)[field] = value
  return new.to_dict()


@pytest.mark.parametrize("changes, named", [
    ({"optimizer.learning_rate": 0.05}, ["optimizer.learning_rate 0.1 -> 0.05"]),
    ({"alpha": 4.0}, ["alpha 1.0 -> 4.0"]),
    ({"sparsity.method": "rigl", "sparsity.level": 0.9},
     ["sparsity.level 0.0 -> 0.9", "sparsity.method 'none' -> 'rigl'"]),
    ({"train.steps": 1000}, ["train.steps 50000 -> 1000"]),
])
def test_changed_config_is_refused_naming_fields(tmp_path, changes, named):
  new = _recorded(tmp_path, **changes)
  for allow_extend in (False, True):
    with pytest.raises(workdir_lib.WorkdirError) as e:
      workdir_lib.check_same_run(str(tmp_path), new, allow_extend=allow_extend)
    msg = str(e.value)
    assert "\n" not in msg and "new --workdir" in msg and workdir_lib.OVERRIDE_FLAG in msg
    for field in named:
      assert field in msg
  workdir_lib.check_same_run(str(tmp_path), new, override=True)  # the explicit escape hatch


def test_cadence_and_path_changes_are_the_same_run(tmp_path):
  new = _recorded(tmp_path, **{
      "train.log_every": 7, "train.eval_every": 7, "train.checkpoint_every": 7,
      "train.chunk_steps": 3, "train.num_devices": 2, "train.eval_batch_size": 5,
      "data.dir": "/elsewhere", "data.workers": 4, "prune.scope": "global",
      "sweep.alphas": (2.0, 4.0)})
  workdir_lib.check_same_run(str(tmp_path), new)
  workdir_lib.check_same_run(str(tmp_path / "fresh"), new)  # nothing recorded: nothing to check


def test_raising_steps_needs_allow_extend(tmp_path):
  new = _recorded(tmp_path, **{"train.steps": 60_000})
  with pytest.raises(workdir_lib.WorkdirError, match=workdir_lib.EXTEND_FLAG):
    workdir_lib.check_same_run(str(tmp_path), new)
  workdir_lib.check_same_run(str(tmp_path), new, allow_extend=True)
  workdir_lib.record_run(str(tmp_path), new)
  workdir_lib.check_same_run(str(tmp_path), new)


def test_lowered_steps_get_no_extend_hint_and_legacy_config_json_counts(tmp_path):
  new = _recorded(tmp_path, **{"train.steps": 10})
  with pytest.raises(workdir_lib.WorkdirError) as e:
    workdir_lib.check_same_run(str(tmp_path), new)
  assert workdir_lib.EXTEND_FLAG not in str(e.value)
  legacy = tmp_path / "legacy"  # a workdir from before run_config.json: only config.json
  legacy.mkdir()
  (legacy / "config.json").write_text(json.dumps(config_lib.base().to_dict()))
  with pytest.raises(workdir_lib.WorkdirError, match="alpha 1.0 -> 4.0"):
    workdir_lib.check_same_run(str(legacy), _recorded(tmp_path / "x", alpha=4.0))


def test_record_run_non_writer_writes_nothing(tmp_path):
  workdir_lib.record_run(str(tmp_path / "w"), config_lib.base().to_dict(), is_writer=False)
  assert not (tmp_path / "w").exists()


# --- workdir lock -------------------------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("wd", sys.argv[1])
    wd = importlib.util.module_from_spec(spec); spec.loader.exec_module(wd)
    lock = wd.WorkdirLock(sys.argv[2]); lock.acquire()
    print("locked", flush=True)
    sys.stdin.read()
""")


def test_lock_held_by_another_process(tmp_path):
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, workdir_lib.__file__, str(tmp_path)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lib.WorkdirError) as e:
      with workdir_lib.WorkdirLock(str(tmp_path)):
        pass
    msg = str(e.value)
    assert f"pid {proc.pid}" in msg and "since" in msg and str(tmp_path / ".lock") in msg
    assert "\n" not in msg
  finally:
    proc.kill()  # a crash: the OS releases the flock
    proc.wait()
  with workdir_lib.WorkdirLock(str(tmp_path)) as lock:
    info = json.loads((tmp_path / ".lock").read_text())
    assert info["pid"] == os.getpid()
  assert lock._fd is None
  with workdir_lib.WorkdirLock(str(tmp_path / "other"), is_writer=False):
    assert not (tmp_path / "other").exists()


# --- damaged checkpoints ------------------------------------------------------------------

def _state(step: int, scale: float = 1.0):
  rng = np.random.default_rng(step)
  return {"params": {"w": (scale * rng.normal(size=(96, 64))).astype(np.float32),
                     "b": rng.normal(size=(64,)).astype(np.float32)},
          "step": step}


def _save(workdir, *steps, nan_at=None):
  ckpt = checkpoint.Checkpointer(str(workdir))
  for s in steps:
    ckpt.save(s, _state(s, np.nan if s == nan_at else 1.0))
  ckpt.close()


def _damage(step_dir):
  """Flips 64 bytes in the middle of the step's largest data file."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs
           if f != checkpoint.CHECKSUM_FILE]
  largest = max(files, key=os.path.getsize)
  data = bytearray(open(largest, "rb").read())
  mid = len(data) // 2 - 32
  data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
  open(largest, "wb").write(bytes(data))


def _restore(workdir):
  logs = []
  ckpt = checkpoint.Checkpointer(str(workdir))
  try:
    state, step = ckpt.restore_latest_intact(_state(0), log=logs.append)
  finally:
    ckpt.close()
  return state, step, logs


def test_intact_latest_is_restored(tmp_path):
  _save(tmp_path, 10, 20)
  state, step, logs = _restore(tmp_path)
  assert step == 20 and state["step"] == 20 and not logs
  np.testing.assert_array_equal(state["params"]["w"], _state(20)["params"]["w"])
  assert _restore(tmp_path / "empty")[:2] == (None, None)


def test_damaged_latest_falls_back_to_earlier(tmp_path):
  _save(tmp_path, 10, 20)
  _damage(tmp_path / "checkpoints" / "20")
  state, step, logs = _restore(tmp_path)
  assert step == 10 and state["step"] == 10
  np.testing.assert_array_equal(state["params"]["w"], _state(10)["params"]["w"])
  assert "step 20" in logs[0] and "sha256 mismatch" in logs[0] and "\n" not in logs[0]
  # The damaged step is moved aside, so the resumed run can save step 20 again.
  assert (tmp_path / checkpoint.DAMAGED_DIR / "20").is_dir()
  _save(tmp_path, 20)
  assert _restore(tmp_path)[1] == 20


def test_all_damaged_is_one_line_error(tmp_path):
  _save(tmp_path, 10, 20)
  for s in ("10", "20"):
    _damage(tmp_path / "checkpoints" / s)
  with pytest.raises(checkpoint.CheckpointError) as e:
    _restore(tmp_path)
  msg = str(e.value)
  assert "\n" not in msg and "step 20" in msg and "step 10" in msg
  assert str(tmp_path / "checkpoints") in msg


def test_missing_checksum_is_damage(tmp_path):
  _save(tmp_path, 10, 20)
  os.remove(tmp_path / "checkpoints" / "20" / checkpoint.CHECKSUM_FILE)
  _, step, logs = _restore(tmp_path)
  assert step == 10 and checkpoint.CHECKSUM_FILE in logs[0]


def test_nan_params_are_damage(tmp_path):
  _save(tmp_path, 10, 20, nan_at=20)
  _, step, logs = _restore(tmp_path)
  assert step == 10 and "params.w holds NaN" in logs[0]


def test_unreadable_by_orbax_is_damage(tmp_path):
  _save(tmp_path, 10, 20)
  step_dir = tmp_path / "checkpoints" / "20"
  (step_dir / "default" / "_METADATA").write_text("{")
  checkpoint.write_checksums(str(step_dir))  # checksums agree: orbax itself has to fail
  _, step, logs = _restore(tmp_path)
  assert step == 10 and "orbax cannot read it" in logs[0] and "\n" not in logs[0]


class _TrainState(NamedTuple):
  step: jax.Array
  params: dict
  opt_state: Any
  masks: dict
  rng: jax.Array


def test_real_train_state_round_trip_has_no_false_alarm(tmp_path):
  """NamedTuples, optax states (EmptyState, counts), Haiku names, bool masks, a raw PRNG key."""
  def make(seed):
    params = {"mlp/~/linear_0": {"w": jax.random.normal(jax.random.PRNGKey(seed), (8, 4)),
                                 "b": jnp.zeros(4)}}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    return _TrainState(jnp.int32(seed), params, tx.init(params),
                       {"mlp/~/linear_0": {"w": jnp.ones((8, 4), bool)}},
                       jax.random.PRNGKey(seed))
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(7, make(7))
  logs = []
  state, step = ckpt.restore_latest_intact(make(0), log=logs.append)
  ckpt.close()
  assert step == 7 and not logs and isinstance(state, _TrainState)
  chex.assert_trees_all_equal(state, make(7))


def test_nan_placeholders_are_not_damage(tmp_path):
  """PackNet keeps an accuracy matrix that is NaN until a task is measured."""
  acc = np.full((3, 3), np.nan)
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(1, {**_state(1), "acc": acc, "seen": np.array(np.nan, np.float32)})
  target = {**_state(0), "acc": acc, "seen": np.zeros((), np.float32)}
  state, step = ckpt.restore_latest_intact(target, allow_nonfinite=("seen",))
  ckpt.close()
  assert step == 1 and np.isnan(state["acc"]).all() and np.isnan(state["seen"])


def test_shape_or_dtype_change_is_refused(tmp_path):
  _save(tmp_path, 10)
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  for target, expect in [
      ({**_state(0), "params": {"w": np.zeros((64, 96), np.float32),
                                "b": np.zeros(64, np.float32)}}, "params.w"),
      ({**_state(0), "params": {"w": np.zeros((96, 64), np.float16),
                                "b": np.zeros(64, np.float32)}}, "float16")]:
    with pytest.raises(checkpoint.CheckpointError, match=expect):
      ckpt.restore_latest_intact(target, log=lambda _: None)
  ckpt.close()


def test_checkpoints_as_a_file_fails_fast(tmp_path):
  (tmp_path / "checkpoints").write_text("not a folder")
  t0 = time.time()
  with pytest.raises(checkpoint.CheckpointError, match="is a file, not a directory"):
    checkpoint.Checkpointer(str(tmp_path))
  assert time.time() - t0 < 5


def test_stray_folder_is_ignored(tmp_path):
  _save(tmp_path, 10, 20)
  (tmp_path / "checkpoints" / "99999").mkdir()
  state, step, logs = _restore(tmp_path)
  assert step == 20 and state["step"] == 20
  assert "99999" in logs[0] and "not an orbax checkpoint" in logs[0]
  assert not (tmp_path / "checkpoints" / "99999").exists()
  _save(tmp_path, 30)  # retention keeps the real steps 20 and 30, not the stray one
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "30"]
  (tmp_path / "only_stray" / "checkpoints" / "5").mkdir(parents=True)
  assert _restore(tmp_path / "only_stray")[:2] == (None, None)


# --- metrics --------------------------------------------------------------------------------

def _tb_events(logdir) -> list[event_pb2.Event]:
  """Every event of the TFRecord files in ``logdir`` (length, crc, payload, crc)."""
  events = []
  for name in sorted(os.listdir(logdir)):
    data, i = (logdir / name).read_bytes(), 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
      i += n + 16
  return events


def test_metrics_writer_files_resume_and_dedup(tmp_path):
  with metrics.MetricsWriter(str(tmp_path)) as w:
    for s in (1, 2, 3):
      w.write({"step": s, "train_loss": np.float32(1.0 / s), "learning_rate": 0.1,
               "validation_accuracy": float("nan") if s == 3 else 0.5})
  path = tmp_path / metrics.METRICS_FILE
  records = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["step"] for r in records] == [1, 2, 3]
  assert isinstance(records[0]["train_loss"], float) and np.isnan(records[2]["validation_accuracy"])
  assert any("tfevents" in f for f in os.listdir(tmp_path / metrics.TENSORBOARD_DIR))

  with metrics.MetricsWriter(str(tmp_path), start_step=2) as w:  # resumed from step 2
    assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 2]
    w.write({"step": 3, "train_loss": 0.25})
  assert [r["train_loss"] for r in metrics.read_metrics(str(path))] == [1.0, 0.5, 0.25]
  events = _tb_events(tmp_path / metrics.TENSORBOARD_DIR)
  losses = [(e.step, v.simple_value) for e in events for v in e.summary.value
            if v.tag == "train_loss"]
  assert losses == [(1, 1.0), (2, 0.5), (3, np.float32(1 / 3)), (3, 0.25)]
  # The resumed writer tells TensorBoard to hide the first run's events after step 2.
  assert any(e.session_log.status == event_pb2.SessionLog.START and e.step == 3
             for e in events)

  old = tmp_path / "old.jsonl"  # an older version appended a resumed run's records
  old.write_text("".join(json.dumps({"step": s, "v": v}) + "\n"
                         for s, v in [(1, 1), (2, 2), (1, 3), (2, 4), (3, 5)]) + '{"step": 4')
  assert [(r["step"], r["v"]) for r in metrics.read_metrics(str(old))] == [(1, 3), (2, 4), (3, 5)]


def test_metrics_non_writer_writes_nothing(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path / "w"), is_writer=False, start_step=5)
  w.write({"step": 6, "train_loss": 0.1})
  w.flush()
  w.close()
  assert not (tmp_path / "w").exists()
  with pytest.raises(ValueError, match="is closed"):
    w.write({"step": 7})


def test_format_progress():
  line = metrics.format_progress(2000, 50_000, {"step": 2000, "train_loss": 0.12345,
                                                "learning_rate": 1e-5}, 1234.4, 8.0)
  assert line == ("step 2000/50000 (4%) train_loss=0.1235 learning_rate=1.000e-05 "
                  "[1234 img/s, ETA 3m12s]")
  assert metrics.format_progress(10, 10, {}, 5.0, 1.0).endswith("ETA 0s]")
