"""Training metrics: ``workdir/metrics.jsonl`` (one JSON object per record) and TensorBoard.

Each record is a dict with an integer ``"step"`` and scalar metrics (``train_loss``,
``validation_accuracy``, ``learning_rate``, ``sparsity``, ``images_per_s``, ...). A run resumed
from step k first drops the records after k (they are recomputed), so a reader sees each step
once; TensorBoard hides the old events after k through tensorboardX's ``purge_step``.

A workdir on an object store (``gs://``) is written through ``files``: the log is rewritten
whole (atomically) at each record, as object stores cannot append, and the TensorBoard events
are written to a local temporary folder and copied to ``workdir/tensorboard`` at each flush
and at close.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
import tempfile
import time
from typing import Any, Optional

import numpy as np
from tensorboardX import SummaryWriter

from powerprop_jax.experiment import files

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl, one per step (the last written wins), sorted by step.

  Lines that are not a JSON object with a numeric ``step`` (e.g. one cut short by a crash)
  are skipped.
  """
  by_step: dict[int, dict[str, Any]] = {}
  for line in files.read_text(path).splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and isinstance(record.get("step"), numbers.Real):
      by_step[int(record["step"])] = record
  return [by_step[s] for s in sorted(by_step)]


def _scalar(key: str, value: Any) -> Any:
  """A JSON-ready value: numbers (numpy/jax scalars included) as float, strings as they are."""
  if isinstance(value, (str, bool)) or value is None:
    return value
  if isinstance(value, numbers.Integral) and not isinstance(value, np.generic):
    return int(value)
  array = np.asarray(value)
  if array.size != 1 or not np.issubdtype(array.dtype, np.number):
    raise ValueError(f"metrics record field {key!r} is {array.dtype}{list(array.shape)}; "
                     "write one number per field")
  return float(array.reshape(()))


class MetricsWriter:
  """Writes records to ``workdir/metrics.jsonl`` and TensorBoard (``workdir/tensorboard``).

  ``start_step``: the step the run (re)starts at; records after it are dropped first. With
  ``is_writer=False`` (processes other than 0) nothing is written, no file or folder made.
  """

  def __init__(self, workdir: str, is_writer: bool = True, start_step: int = 0):
    self.path = os.path.join(workdir, METRICS_FILE)
    self._workdir = workdir
    self._file = None
    self._lines: Optional[list[str]] = None   # the whole log, for an object store
    self._tb = None
    self._tb_local: Optional[str] = None       # local event folder mirrored to the workdir
    self._closed = False
    if not is_writer:
      return
    files.makedirs(workdir)
    kept = ([json.dumps(r) + "\n" for r in read_metrics(self.path) if r["step"] <= start_step]
            if files.exists(self.path) else [])
    tb_dir = os.path.join(workdir, TENSORBOARD_DIR)
    if files.is_local(workdir):
      if files.exists(self.path) and files.read_text(self.path) != "".join(kept):
        files.atomic_write(self.path, "".join(kept))
      self._file = open(self.path, "a")
    else:
      self._lines = kept
      files.atomic_write(self.path, "".join(kept))
      self._tb_local = tempfile.mkdtemp(prefix="powerprop-tb-")
      tb_dir = self._tb_local
    # purge_step hides older events after start_step (e.g. from the run being resumed); the
    # suffix keeps this writer from overwriting one started in the same second.
    self._tb = SummaryWriter(tb_dir, purge_step=int(start_step) + 1,
                             filename_suffix=f".{os.getpid()}.{time.time_ns()}")

  def write(self, record: dict[str, Any]) -> None:
    """Appends one record (needs an integer ``step``); numeric fields also go to TensorBoard."""
    if "step" not in record:
      raise ValueError(f"metrics record {sorted(record)} has no 'step'; add the global step")
    if self._closed:
      raise ValueError(f"MetricsWriter for {self.path} is closed; write before close()")
    if self._tb is None:
      return
    step = int(record["step"])
    clean = {k: _scalar(k, v) for k, v in record.items()}
    clean["step"] = step
    line = json.dumps(clean) + "\n"
    if self._lines is None:
      self._file.write(line)
      self._file.flush()
    else:
      self._lines.append(line)
      files.atomic_write(self.path, "".join(self._lines))
    for key, value in clean.items():
      if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tb.add_scalar(key, value, global_step=step)

  def flush(self) -> None:
    if self._tb is not None:
      if self._file is not None:
        self._file.flush()
      self._tb.flush()
      self._mirror_tensorboard()

  def close(self) -> None:
    self._closed = True
    if self._tb is not None:
      if self._file is not None:
        self._file.close()
      self._tb.close()
      self._mirror_tensorboard()
      if self._tb_local is not None:
        shutil.rmtree(self._tb_local, ignore_errors=True)
      self._file = self._tb = self._tb_local = None

  def _mirror_tensorboard(self) -> None:
    """Copies the local event files to ``workdir/tensorboard`` (object-store workdirs)."""
    if self._tb_local is None:
      return
    for name in sorted(os.listdir(self._tb_local)):
      with open(os.path.join(self._tb_local, name), "rb") as f:
        files.atomic_write(os.path.join(self._workdir, TENSORBOARD_DIR, name), f.read())

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def format_duration(seconds: float) -> str:
  """``45s``, ``3m12s``, ``2h05m``, ``1d03h``."""
  s = int(round(seconds))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  if s < 86400:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _format_value(value: Any) -> str:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return str(value)
  if isinstance(value, numbers.Integral):
    return str(int(value))
  v = float(value)
  return f"{v:.4f}" if v == 0 or not math.isfinite(v) or abs(v) >= 1e-3 else f"{v:.3e}"


def format_progress(step: int, total: int, record: dict[str, Any], images_per_s: float,
                    elapsed_s: float, start_step: int = 0) -> str:
  """``step 2000/50000 (4%) train_loss=0.1234 ... [1234 img/s, ETA 3m12s]``.

  ``elapsed_s``: seconds since this process started training at ``start_step`` (the ETA
  extrapolates that pace to the remaining steps).
  """
  fields = " ".join(f"{k}={_format_value(v)}" for k, v in record.items()
                    if k not in ("step", "images_per_s"))
  done = step - start_step
  if step >= total:
    eta = "0s"
  elif done > 0 and elapsed_s > 0:
    eta = format_duration((total - step) * elapsed_s / done)
  else:
    eta = "?"
  pct = 100 * step // max(total, 1)
  head = f"step {step}/{total} ({pct}%)"
  return f"{head} {fields} [{images_per_s:.0f} img/s, ETA {eta}]" if fields else \
      f"{head} [{images_per_s:.0f} img/s, ETA {eta}]"
