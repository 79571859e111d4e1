"""The one sweep mechanism: run a function over cells of config overrides, one workdir each.

    cells = sweep.grid(alpha=config.sweep.alphas, seed=config.sweep.seeds)
    outcomes = sweep.run_cells(config, workdir, cells, run_cell, check=train.check_config)
    rows = sweep.rows(outcomes)

Each cell is a dict of dotted config fields (``{"alpha": 2.0, "seed": 0}``); ``run_cell``
gets the cell's config (a copy with those fields set) and its workdir
(``workdir/alpha2_seed0``), and returns the cell's result rows. Before any work, every cell's
config is checked (``check``) and every existing cell workdir is checked to hold a run of the
same config (``workdir.status``): a sweep rerun with another config is refused in one line,
never answered with the old results. A finished cell (its rows recorded by
``workdir.write_cell_results``) is reused without training; a cell whose loss diverged is
recorded (``workdir.mark_diverged``) and reported as diverged, not retried; anything else is
(re)run, resuming from its checkpoints. ``shard=(i, n)`` runs every n-th cell from i, so n
processes can share a phase. Phases (tune, then final at the chosen values) are two calls;
:func:`outcomes` reads a phase's records without running anything.
"""

from __future__ import annotations

import copy
import itertools
import os
from typing import Any, Callable, NamedTuple, Optional, Sequence

import ml_collections

from powerprop_jax import checks, transform
from powerprop_jax.experiment import workdir as workdir_lib

Cell = dict[str, Any]
Log = Callable[[str], None]
RunCell = Callable[[ml_collections.ConfigDict, str, Cell], list[dict[str, Any]]]
FINISHED, DIVERGED, MISSING = workdir_lib.FINISHED, workdir_lib.DIVERGED, "not run"


class Outcome(NamedTuple):
  """What one cell of a sweep holds."""
  cell: Cell
  workdir: str
  state: str                       # FINISHED | DIVERGED | MISSING
  rows: list[dict[str, Any]]       # the cell's result rows ([] unless finished)
  error: str = ""                  # the divergence message


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks the ``sweep`` section: every axis non-empty and every value valid for its field."""
  from powerprop_jax.sparsity import builders  # pylint: disable=g-import-not-at-top
  w = config.sweep
  for field in ("alphas", "seeds", "methods", "levels", "learning_rates", "gammas",
                "prune_fractions"):
    if len(w[field]) == 0:
      raise checks.ConfigError(f"sweep.{field} is empty: a sweep needs at least one value")
  for alpha in w.alphas:
    try:
      transform.validate_alpha(alpha)
    except ValueError as e:
      raise checks.ConfigError(f"sweep.alphas: {e}") from None
  for seed in w.seeds:
    checks.integer(seed, "sweep.seeds")
  for method in w.methods:
    checks.choice(method, "sweep.methods", sorted(builders.METHODS))
  for level in w.levels:
    checks.fraction(level, "sweep.levels")
  for lr in w.learning_rates:
    checks.positive(lr, "sweep.learning_rates")
  for g in w.gammas:
    checks.fraction(g, "sweep.gammas", 0.0, 1.0, closed_low=False, closed_high=True)
  for f in w.prune_fractions:
    checks.fraction(f, "sweep.prune_fractions", 0.0, 1.0, closed_low=False)


def grid(**axes: Sequence[Any]) -> list[Cell]:
  """The product of the axes, in order: ``grid(alpha=(1, 2), seed=(0,))``. A key may be a
  dotted field written with ``__`` for the dot (``sparsity__method``)."""
  names = [k.replace("__", ".") for k in axes]
  return [dict(zip(names, values)) for values in itertools.product(*axes.values())]


def cell_config(config: ml_collections.ConfigDict, cell: Cell) -> ml_collections.ConfigDict:
  """A copy of ``config`` with the cell's dotted fields set (types as in the cell)."""
  out = copy.deepcopy(config)
  with out.unlocked():
    for dotted, value in cell.items():
      *path, leaf = dotted.split(".")
      node = out
      for part in path:
        node = node[part]
      node[leaf] = value
  return out


def cell_name(cell: Cell) -> str:
  """``alpha2_seed0``-style folder name: the last part of each field and its value."""
  parts = []
  for dotted, value in cell.items():
    short = {"alpha": "alpha", "seed": "seed"}.get(dotted, dotted.rsplit(".", 1)[-1])
    parts.append(f"{short}{value:g}" if isinstance(value, float) else f"{short}{value}")
  return "_".join(parts)


def tags(cell: Cell) -> dict[str, Any]:
  """The cell's values keyed by the last part of each field (``sparsity.level`` -> level)."""
  return {k.rsplit(".", 1)[-1]: v for k, v in cell.items()}


def outcome(config: ml_collections.ConfigDict, workdir: str, cell: Cell,
            name: Callable[[Cell], str] = cell_name, steps_field: str = "train.steps"
            ) -> Outcome:
  """What ``workdir/name(cell)`` holds for the cell (nothing is run). Raises WorkdirError if
  it holds a run of another config."""
  run_dir = os.path.join(workdir, name(cell))
  status = workdir_lib.status(run_dir, cell_config(config, cell), steps_field)
  if status.state == workdir_lib.OTHER_CONFIG:
    raise workdir_lib.WorkdirError(
        f"{status.detail}; use a new --workdir for a sweep with another config")
  if status.state == workdir_lib.DIVERGED:
    return Outcome(cell, run_dir, DIVERGED, [], status.detail)
  rows = (workdir_lib.cell_results(run_dir, cell_config(config, cell))
          if status.state != workdir_lib.ABSENT else None)
  return Outcome(cell, run_dir, MISSING if rows is None else FINISHED, rows or [])


def outcomes(config: ml_collections.ConfigDict, workdir: str, cells: Sequence[Cell],
             name: Callable[[Cell], str] = cell_name, steps_field: str = "train.steps"
             ) -> list[Outcome]:
  """:func:`outcome` of every cell."""
  return [outcome(config, workdir, c, name, steps_field) for c in cells]


def run_cells(config: ml_collections.ConfigDict, workdir: str, cells: Sequence[Cell],
              run_cell: RunCell, log: Log = print, name: Callable[[Cell], str] = cell_name,
              check: Optional[Callable[[ml_collections.ConfigDict], None]] = None,
              shard: tuple[int, int] = (0, 1), phase: str = "",
              steps_field: str = "train.steps") -> list[Outcome]:
  """Runs this shard's cells in order (module docstring); returns their outcomes."""
  from powerprop_jax.experiment import train  # pylint: disable=g-import-not-at-top
  mine = list(cells)[shard[0]::shard[1]]
  if check is not None:
    for cell in cells:   # every cell, so a bad one is refused before any cell trains
      check(cell_config(config, cell))
  found = outcomes(config, workdir, mine, name, steps_field)   # refuses another config first
  out = []
  head = f"{phase} " if phase else ""
  for i, got in enumerate(found):
    where = f"== {head}[{i + 1}/{len(found)}] " + " ".join(
        f"{k}={v}" for k, v in got.cell.items())
    if got.state != MISSING:
      log(f"{where}: {got.state} in {got.workdir} (recorded; not rerun)")
      out.append(got)
      continue
    log(f"{where} in {got.workdir}")
    try:
      rows = run_cell(cell_config(config, got.cell), got.workdir, got.cell)
    except train.TrainingDiverged as e:   # a result (an lr too large), not a crash
      workdir_lib.mark_diverged(got.workdir, str(e))
      log(f"   diverged: {e}")
      out.append(got._replace(state=DIVERGED, error=str(e)))
      continue
    workdir_lib.write_cell_results(got.workdir, rows, cell_config(config, got.cell))
    out.append(got._replace(state=FINISHED, rows=rows))
  return out


def rows(found: Sequence[Outcome]) -> list[dict[str, Any]]:
  """Every finished cell's rows, each tagged with its cell's values (:func:`tags`)."""
  return [{**tags(o.cell), **row} for o in found if o.state == FINISHED for row in o.rows]


def run(config: ml_collections.ConfigDict, workdir: str, cells: Sequence[Cell],
        run_cell: RunCell, log: Log = print, name: Callable[[Cell], str] = cell_name,
        check: Optional[Callable[[ml_collections.ConfigDict], None]] = None
        ) -> list[dict[str, Any]]:
  """:func:`run_cells` then :func:`rows`; a diverged cell is a one-line error here (a sweep
  that reports tables has no score for it)."""
  found = run_cells(config, workdir, cells, run_cell, log, name, check)
  bad = [o for o in found if o.state == DIVERGED]
  if bad:
    from powerprop_jax.experiment import train  # pylint: disable=g-import-not-at-top
    raise train.TrainingDiverged(f"{bad[0].workdir}: {bad[0].error}")
  return rows(found)
