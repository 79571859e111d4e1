"""A run's files: the atomic write (files), the results writers (results), the metrics log
(metrics) and what a workdir holds (workdir.status, run records, cell results)."""

import json
import os

import numpy as np
import pytest

from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import files, metrics, results
from powerprop_jax.experiment import workdir as workdir_lib


def _config(**fields):
  c = config_lib.base()
  for dotted, value in fields.items():
    section, leaf = dotted.split(".") if "." in dotted else (None, dotted)
    (c[section] if section else c)[leaf] = value
  return c


# ---- files ----

def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
  path = tmp_path / "sub" / "results.json"
  files.write_json(path, {"rows": [1, 2]})
  assert json.loads(path.read_text()) == {"rows": [1, 2]}
  real_replace = os.replace

  def crash(src, dst):  # the process dies between writing the temporary file and the rename
    raise KeyboardInterrupt("killed")

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(KeyboardInterrupt):
    files.write_json(path, {"rows": []})
  monkeypatch.setattr(os, "replace", real_replace)
  assert json.loads(path.read_text()) == {"rows": [1, 2]}      # the previous good results
  assert os.listdir(path.parent) == ["results.json"]           # no temporary file left


def test_read_json_treats_missing_empty_and_torn_files_as_absent(tmp_path):
  assert files.read_json(tmp_path / "none.json", "d") == "d"
  (tmp_path / "empty.json").write_text("")
  assert files.read_json(tmp_path / "empty.json") is None
  (tmp_path / "torn.json").write_text('{"rows": [1, 2')
  assert files.read_json(tmp_path / "torn.json", {}) == {}
  (tmp_path / "ok.json").write_text('{"a": 1}')
  assert files.read_json(tmp_path / "ok.json") == {"a": 1}


def test_results_writers_are_atomic_and_complete(tmp_path, monkeypatch):
  rows = [{"alpha": 1.0, "accuracy": 0.5}, {"alpha": 2.0, "accuracy": 0.75, "extra": "x"}]
  results.write_csv(str(tmp_path / "r.csv"), rows)
  assert (tmp_path / "r.csv").read_text().splitlines() == [
      "alpha,accuracy,extra", "1.0,0.5,", "2.0,0.75,x"]
  monkeypatch.setattr(files, "atomic_write", lambda *a: (_ for _ in ()).throw(OSError("full")))
  with pytest.raises(OSError):
    results.write_csv(str(tmp_path / "r.csv"), rows[:1])
  assert len((tmp_path / "r.csv").read_text().splitlines()) == 3   # untouched


def test_mean_by_groups_mean_std_count():
  rows = [{"a": 1, "v": 1.0}, {"a": 1, "v": 3.0}, {"a": 2, "v": 5.0}]
  assert results.mean_by(rows, ("a",), "v") == {(1,): (2.0, 1.0, 2), (2,): (5.0, 0.0, 1)}


# ---- metrics ----

def test_metrics_reader_skips_a_torn_line_and_keeps_the_last_record_per_step(tmp_path):
  path = tmp_path / metrics.METRICS_FILE
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n'
                  '{"step": 1, "loss": 1.5}\n{"step": 3, "lo')
  assert metrics.read_metrics(str(path)) == [{"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.0}]


def test_metrics_writer_resumed_at_k_drops_later_records(tmp_path):
  with metrics.MetricsWriter(str(tmp_path)) as w:
    for s in (1, 2, 3):
      w.write({"step": s, "loss": float(s)})
  with metrics.MetricsWriter(str(tmp_path), start_step=2) as w:
    w.write({"step": 3, "loss": 0.5})
  assert metrics.read_metrics(str(tmp_path / metrics.METRICS_FILE)) == [
      {"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 0.5}]
  with pytest.raises(ValueError, match="one number per field"):
    metrics.MetricsWriter(str(tmp_path / "x")).write({"step": 1, "v": np.ones(2)})


# ---- workdir ----

def test_run_fields_is_the_one_definition_of_a_run():
  a = workdir_lib.run_fields(_config())
  assert "alpha" in a and "train.steps" in a and "sparsity.level" in a
  assert not any(k.startswith(("prune.", "sweep.")) or k == "data.dir" for k in a)
  b = workdir_lib.run_fields(_config(**{"data.dir": "/elsewhere", "train.log_every": 7}))
  assert a == b   # where the data live and how often to log do not change the run
  c = workdir_lib.run_fields(_config(alpha=2.0))
  assert workdir_lib.differences(a, c) == ["alpha 1.0 -> 2.0"]
  assert workdir_lib.run_identity(_config()) != workdir_lib.run_identity(_config(alpha=2.0))


def _finish(workdir, config, steps):
  workdir_lib.record_run(str(workdir), config)
  with metrics.MetricsWriter(str(workdir)) as w:
    w.write({"step": steps, "test_accuracy": 0.9})


def test_status_names_each_state(tmp_path):
  c = _config(**{"train.steps": 10})
  assert workdir_lib.status(str(tmp_path / "none"), c).state == workdir_lib.ABSENT
  run = tmp_path / "run"
  workdir_lib.record_run(str(run), c)
  assert workdir_lib.status(str(run), c).state == workdir_lib.UNFINISHED
  _finish(run, c, 10)
  got = workdir_lib.status(str(run), c)
  assert got.state == workdir_lib.FINISHED and got.final["test_accuracy"] == 0.9
  other = workdir_lib.status(str(run), _config(**{"train.steps": 10, "alpha": 3.0}))
  assert other.state == workdir_lib.OTHER_CONFIG and "alpha 1.0 -> 3.0" in other.detail
  workdir_lib.mark_diverged(str(run), "loss became nan at step 4")
  assert workdir_lib.status(str(run), c) == workdir_lib.RunStatus(
      workdir_lib.DIVERGED, got.final, "loss became nan at step 4")


def test_checkpoints_without_a_run_record_are_not_resumed(tmp_path):
  (tmp_path / "checkpoints" / "20").mkdir(parents=True)
  with pytest.raises(workdir_lib.WorkdirError, match="checkpoints but no run record"):
    workdir_lib.check_same_run(str(tmp_path), _config())
  workdir_lib.check_same_run(str(tmp_path), _config(), override=True)   # the user's choice
  workdir_lib.check_same_run(str(tmp_path / "fresh"), _config())         # nothing to check


def test_cell_results_are_reused_only_for_the_fields_they_came_from(tmp_path):
  c = _config()
  workdir_lib.write_cell_results(str(tmp_path), [{"accuracy": 0.5}], c)
  assert workdir_lib.cell_results(str(tmp_path), c) == [{"accuracy": 0.5}]
  assert workdir_lib.cell_results(str(tmp_path), _config(**{"data.dir": "/x"})) is not None
  other = _config()
  other.prune.structures = "2:4"   # computed after training: the rows must be recomputed
  assert workdir_lib.cell_results(str(tmp_path), other) is None
  (tmp_path / workdir_lib.RESULTS_FILE).write_text("")     # a torn file: recompute
  assert workdir_lib.cell_results(str(tmp_path), c) is None


def test_workdir_lock_names_its_holder(tmp_path):
  with workdir_lib.WorkdirLock(str(tmp_path)):
    fd = os.open(str(tmp_path / workdir_lib.LOCK_FILE), os.O_RDONLY)
    info = json.loads(os.read(fd, 4096))
    os.close(fd)
    assert info["pid"] == os.getpid()


def test_a_field_added_since_a_run_was_recorded_counts_at_its_default():
  old = workdir_lib.run_fields(_config())
  del old["train.microbatches"]            # a record written before the field existed
  assert workdir_lib.differences(old, workdir_lib.run_fields(_config())) == []
  changed = workdir_lib.run_fields(_config(**{"train.microbatches": 4}))
  assert workdir_lib.differences(old, changed) == ["train.microbatches (absent) -> 4"]
  assert "train.profile" not in old and "train.compilation_cache" not in old   # cadence only
