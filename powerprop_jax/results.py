"""Writing results: JSON, CSV and a PNG plot of a metric against a swept variable."""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from typing import Any, Sequence

import numpy as np


def write_json(path: str, rows: Any) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(rows, f, indent=1)


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fields = list(dict.fromkeys(k for r in rows for k in r))
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


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
  fig.savefig(path, dpi=120)
  plt.close(fig)
