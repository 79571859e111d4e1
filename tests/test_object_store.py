"""Every file a run writes goes through one path layer that handles object stores.

Offline, ``gs://`` is served here by an in-memory fsspec file system registered for the
``gcs`` protocol (what epath's fsspec backend asks for), so nothing touches the network and a
file written with ``os``/``open`` by mistake would appear under ``./gs:`` instead."""

import importlib
import json
import os
import subprocess
import sys

import fsspec
from fsspec.implementations.memory import MemoryFileSystem
import numpy as np
import pytest
from etils.epath import backend as epath_backend

from powerprop_jax.experiment import checkpoint, config as config_lib, files, metrics, results
from powerprop_jax.experiment import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeGCS(MemoryFileSystem):
  """An in-memory object store answering to gs:// (no fsync, no flock, no append)."""
  protocol = ("gs", "gcs")
  root_marker = ""
  store: dict = {}
  pseudo_dirs = [""]

  def __init__(self, *args, finalize_on_close=False, **kwargs):
    del finalize_on_close
    super().__init__(*args, **kwargs)


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """A fresh fake bucket; the test runs in an empty cwd so stray local writes show up."""
  FakeGCS.store.clear()
  FakeGCS.pseudo_dirs[:] = [""]
  fsspec.register_implementation("gcs", FakeGCS, clobber=True)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  monkeypatch.chdir(tmp_path)
  yield "gs://bucket/runs/a"
  assert os.listdir(tmp_path) == [], f"local files made for a gs:// workdir: {os.listdir()}"
  importlib.import_module("fsspec.registry")._registry.pop("gcs", None)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()


def test_atomic_write_and_reads_on_the_store(gcs):
  files.check_reachable(gcs)
  path = files.join(gcs, "sub", "results.json")
  files.write_json(path, {"rows": [1]})
  files.write_json(path, {"rows": [1, 2]})
  assert files.read_json(path) == {"rows": [1, 2]}
  assert files.listdir(files.join(gcs, "sub")) == ["results.json"]   # no temporary left
  results.write_csv(files.join(gcs, "r.csv"), [{"a": 1}])
  assert files.read_text(files.join(gcs, "r.csv")).splitlines() == ["a", "1"]


def test_run_record_status_and_degraded_lock(gcs):
  config = config_lib.base()
  logs = []
  with workdir_lib.WorkdirLock(gcs, log=logs.append):
    assert "record file" in logs[0] and "not an OS lock" in logs[0]
    with pytest.raises(workdir_lib.WorkdirError, match="object stores have no real lock"):
      workdir_lib.WorkdirLock(gcs).acquire()
    workdir_lib.record_run(gcs, config)
  assert not files.exists(files.join(gcs, workdir_lib.LOCK_FILE))   # released
  assert workdir_lib.recorded_fields(gcs) == workdir_lib.run_fields(config)
  other = config_lib.base()
  other.alpha = 2.0
  with pytest.raises(workdir_lib.WorkdirError, match="alpha 1.0 -> 2.0"):
    workdir_lib.check_same_run(gcs, other)
  assert workdir_lib.status(gcs, config).state == workdir_lib.UNFINISHED


def test_metrics_log_and_tensorboard_reach_the_store(gcs):
  with metrics.MetricsWriter(gcs) as w:
    for s in (1, 2, 3):
      w.write({"step": s, "loss": float(s)})
  with metrics.MetricsWriter(gcs, start_step=2) as w:   # a resumed run drops step 3
    w.write({"step": 3, "loss": 0.5})
  assert workdir_lib.metrics_records(gcs) == [
      {"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 0.5}]
  events = files.listdir(files.join(gcs, metrics.TENSORBOARD_DIR))
  assert len(events) == 2 and all(e.startswith("events.out.tfevents") for e in events)


def test_checkpoint_checksums_on_the_store(gcs):
  step = files.join(gcs, "checkpoints", "10")
  files.atomic_write(files.join(step, "default", "array"), np.arange(10).tobytes())
  files.atomic_write(files.join(step, "_CHECKPOINT_METADATA"), "{}")
  checkpoint.write_checksums(step)
  assert checkpoint.verify_checksums(step) is None
  files.atomic_write(files.join(step, "default", "array"), np.arange(1, 11).tobytes())
  assert "sha256 mismatch in default/array" in checkpoint.verify_checksums(step)
  saved = json.loads(files.read_text(files.join(step, checkpoint.CHECKSUM_FILE)))["sha256"]
  assert sorted(saved) == ["_CHECKPOINT_METADATA", "default/array"]


def test_unreachable_gs_workdir_fails_at_start_in_one_line(tmp_path):
  """No gcsfs here: the real gs:// backend cannot load. One line, and no ./gs: directory."""
  out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"),
                        f"--config={os.path.join(ROOT, 'configs', 'mnist_oneshot.py')}",
                        "--workdir=gs://no-such-bucket/run"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
  err = out.stderr.strip().splitlines()
  assert out.returncode == 1 and len(err) == 1, err
  assert err[0].startswith("error: workdir gs://no-such-bucket/run cannot be reached")
  assert os.listdir(tmp_path) == []
