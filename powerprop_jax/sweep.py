"""One sweep helper: run a function over a grid of config overrides, one workdir per cell.

    cells = sweep.grid(alpha=config.sweep.alphas, seed=config.sweep.seeds)
    rows = sweep.run(config, workdir, cells, run_cell)

Each cell is a dict of dotted config fields (``{"alpha": 2.0, "seed": 0}``); ``run_cell``
gets the cell's config (a copy with those fields set) and its workdir
(``workdir/alpha2_seed0``), and returns result rows, which are tagged with the cell.
Cells whose run finished are resumed from (or reused in) their workdir by the training loop.
"""

from __future__ import annotations

import copy
import itertools
import os
from typing import Any, Callable, Sequence

import ml_collections

Cell = dict[str, Any]


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


def run(config: ml_collections.ConfigDict, workdir: str, cells: Sequence[Cell],
        run_cell: Callable[[ml_collections.ConfigDict, str, Cell], list[dict[str, Any]]],
        log: Callable[[str], None] = print,
        name: Callable[[Cell], str] = cell_name) -> list[dict[str, Any]]:
  """Runs every cell in order; returns all rows, each tagged with its cell's values."""
  rows = []
  for i, cell in enumerate(cells):
    run_dir = os.path.join(workdir, name(cell))
    log(f"== [{i + 1}/{len(cells)}] " + " ".join(f"{k}={v}" for k, v in cell.items())
        + f" in {run_dir}")
    tags = {k.rsplit(".", 1)[-1]: v for k, v in cell.items()}
    rows.extend({**tags, **row} for row in run_cell(cell_config(config, cell), run_dir, cell))
  return rows
