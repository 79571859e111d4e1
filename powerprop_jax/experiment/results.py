"""Writing results: JSON, CSV and a PNG plot of a metric against a swept variable.

Every file is written whole through :func:`files.atomic_write`: a kill during a write leaves
the previous good file, never an empty or torn one.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from powerprop_jax.experiment import files


def write_json(path: str, rows: Any) -> None:
  """``rows`` as JSON, atomically."""
  files.write_json(path, rows)


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
  """One CSV line per row (columns: every key, in first-seen order), atomically."""
  fields = list(dict.fromkeys(k for r in rows for k in r))
  out = io.StringIO(newline="")
  writer = csv.DictWriter(out, fieldnames=fields)
  writer.writeheader()
  writer.writerows(rows)
  files.atomic_write(path, out.getvalue())


def save_figure(fig: Any, path: str, dpi: int = 120) -> None:
  """Saves a matplotlib figure as PNG, atomically, and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi)
  plt.close(fig)
  files.atomic_write(path, buffer.getvalue())


def mean_by(rows: Sequence[dict[str, Any]], keys: Sequence[str], value: str
            ) -> dict[tuple, tuple[float, float, int]]:
  """{keys tuple: (mean, std, count)} of ``value`` over rows grouped by ``keys``."""
  groups = defaultdict(list)
  for r in rows:
    groups[tuple(r[k] for k in keys)].append(r[value])
  return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in groups.items()}


def plot_curves(path: str, rows: Sequence[dict[str, Any]], x: str, y: str, series: str,
                title: str = "", xlabel: str = "", ylabel: str = "", logx: bool = True) -> None:
  """One line per value of ``series``: mean of ``y`` over repeats at each ``x``, and a band
  spanning min..max across repeats (seeds)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4.2))
  for s in sorted({r[series] for r in rows}):
    points = defaultdict(list)
    for r in rows:
      if r[series] == s:
        points[r[x]].append(r[y])
    xs = sorted(points)
    ax.plot(xs, [np.mean(points[v]) for v in xs], marker="o", ms=3, label=f"{series}={s}")
    ax.fill_between(xs, [min(points[v]) for v in xs], [max(points[v]) for v in xs], alpha=0.2)
  if logx:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel or x)
  ax.set_ylabel(ylabel or y)
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  save_figure(fig, path)
