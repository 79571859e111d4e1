"""The one sweep mechanism (experiment/sweep.py): cells, checks before any work, reuse of
finished cells, divergence records, refusal of another config, shards."""

import pytest

from powerprop_jax import checks
from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import sweep, train
from powerprop_jax.experiment import workdir as workdir_lib


def _config():
  c = config_lib.base()
  c.train.steps = 10
  return c


def _fake_train(calls, diverge=()):
  """A run_cell that records a finished run without training (what train_and_evaluate leaves)."""
  def run_cell(config, run_dir, cell):
    calls.append(sweep.cell_name(cell))
    workdir_lib.record_run(run_dir, config)
    if cell.get("alpha") in diverge:
      raise train.TrainingDiverged("loss became nan at step 3")
    return [{"accuracy": 0.1 * cell["alpha"]}]
  return run_cell


def test_grid_cell_config_and_names():
  cells = sweep.grid(alpha=(1.0, 2.5), sparsity__method=("rigl",))
  assert cells == [{"alpha": 1.0, "sparsity.method": "rigl"},
                   {"alpha": 2.5, "sparsity.method": "rigl"}]
  c = sweep.cell_config(_config(), cells[1])
  assert (c.alpha, c.sparsity.method) == (2.5, "rigl") and _config().alpha == 1.0
  assert sweep.cell_name(cells[1]) == "alpha2.5_methodrigl"
  assert sweep.tags(cells[1]) == {"alpha": 2.5, "method": "rigl"}


def test_finished_cells_are_reused_and_rows_tagged(tmp_path):
  calls = []
  cells = sweep.grid(alpha=(1.0, 2.0))
  rows = sweep.run(_config(), str(tmp_path), cells, _fake_train(calls), log=lambda m: None)
  assert rows == [{"alpha": 1.0, "accuracy": 0.1}, {"alpha": 2.0, "accuracy": 0.2}]
  again = sweep.run(_config(), str(tmp_path), cells, _fake_train(calls), log=lambda m: None)
  assert again == rows and calls == ["alpha1", "alpha2"]   # nothing retrained


def test_a_torn_results_record_reruns_the_cell(tmp_path):
  calls = []
  cells = sweep.grid(alpha=(1.0,))
  sweep.run(_config(), str(tmp_path), cells, _fake_train(calls), log=lambda m: None)
  (tmp_path / "alpha1" / workdir_lib.RESULTS_FILE).write_text('{"fields": {')
  assert sweep.run(_config(), str(tmp_path), cells, _fake_train(calls), log=lambda m: None)
  assert calls == ["alpha1", "alpha1"]


def test_another_config_is_refused_before_any_work(tmp_path):
  calls = []
  cells = sweep.grid(alpha=(1.0, 2.0))
  sweep.run(_config(), str(tmp_path), cells[:1], _fake_train(calls), log=lambda m: None)
  longer = _config()
  longer.train.steps = 20
  with pytest.raises(workdir_lib.WorkdirError, match=r"train.steps 10 -> 20"):
    sweep.run(longer, str(tmp_path), cells, _fake_train(calls), log=lambda m: None)
  assert calls == ["alpha1"]   # alpha 2, a new cell, did not start either


def test_every_cell_is_checked_before_any_cell_runs(tmp_path):
  calls = []
  cells = [{"sparsity.method": "none", "sparsity.level": 0.0},
           {"sparsity.method": "rigl", "sparsity.level": 0.9, "sparsity.end_step": 99}]
  with pytest.raises(checks.ConfigError, match="end_step=99 is past the end"):
    sweep.run(_config(), str(tmp_path), cells, _fake_train(calls), log=lambda m: None,
              check=train.check_config)
  assert calls == []   # the dense cell was not trained before rigl's window was refused


def test_divergence_is_recorded_not_retried(tmp_path):
  calls, logs = [], []
  cells = sweep.grid(alpha=(1.0, 2.0))
  found = sweep.run_cells(_config(), str(tmp_path), cells, _fake_train(calls, diverge=(2.0,)),
                          log=logs.append)
  assert [o.state for o in found] == [sweep.FINISHED, sweep.DIVERGED]
  assert "nan at step 3" in found[1].error
  again = sweep.run_cells(_config(), str(tmp_path), cells, _fake_train(calls), log=logs.append)
  assert [o.state for o in again] == [sweep.FINISHED, sweep.DIVERGED] and len(calls) == 2
  with pytest.raises(train.TrainingDiverged, match="alpha2"):
    sweep.run(_config(), str(tmp_path), cells, _fake_train(calls), log=lambda m: None)


def test_shards_split_the_cells_and_outcomes_read_without_running(tmp_path):
  cells = sweep.grid(alpha=(1.0, 2.0, 3.0, 4.0, 5.0))
  a, b = [], []
  sweep.run_cells(_config(), str(tmp_path), cells, _fake_train(a), log=lambda m: None,
                  shard=(0, 2))
  assert a == ["alpha1", "alpha3", "alpha5"]
  states = [o.state for o in sweep.outcomes(_config(), str(tmp_path), cells)]
  assert states == [sweep.FINISHED, sweep.MISSING] * 2 + [sweep.FINISHED]
  sweep.run_cells(_config(), str(tmp_path), cells, _fake_train(b), log=lambda m: None,
                  shard=(1, 2))
  assert b == ["alpha2", "alpha4"]


@pytest.mark.parametrize("field,value,match", [
    ("alphas", (), "sweep.alphas is empty"),
    ("alphas", (0.5,), "sweep.alphas"),
    ("seeds", (0.5,), "sweep.seeds"),
    ("methods", ("magic",), "sweep.methods"),
    ("levels", (1.0,), "sweep.levels"),
    ("gammas", (0.0,), "sweep.gammas"),
])
def test_sweep_section_is_checked(field, value, match):
  c = _config()
  c.sweep[field] = value
  with pytest.raises(checks.ConfigError, match=match):
    sweep.check_config(c)
