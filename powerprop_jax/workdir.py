"""Run identity and exclusive use of a workdir: no silent resume of a different run.

A workdir holds one run. ``record_run`` writes the config fields that define it to
``workdir/run_config.json``; ``check_same_run`` refuses a later config that differs in any of
them, naming each field ``old -> new`` (a workdir from before ``run_config.json`` is checked
against the ``config.json`` that ``scripts/train.py`` wrote).

Defining fields: every config field (flattened to dotted keys such as
``optimizer.learning_rate``) except those under :data:`IGNORED_PREFIXES`. So ``seed``,
``alpha``, ``data.name``/``source``/``file``/``num_validation``/``image_size``, all of
``model``, ``optimizer``, ``sparsity`` and ``continual``, and ``train.steps``,
``train.batch_size``, ``train.label_smoothing`` and ``train.augment`` define a run, as does any
field an experiment adds (unknown fields count, to be safe). Ignored: where the data live
(``data.dir``), how fast or how often things happen (logging, evaluation and checkpoint
cadence, ``chunk_steps``, ``unroll``, devices, loader workers and prefetch, the evaluation
batch), and what only scripts read after training (``prune``, ``sweep``): none of these changes
the trained weights. Raising ``train.steps`` extends a finished run and is allowed with
``allow_extend``; lowering it never is (the checkpoint is already past the new end).

``WorkdirLock`` keeps a second process out of a workdir while a run uses it.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any, Optional

RUN_CONFIG_FILE = "run_config.json"
LEGACY_CONFIG_FILE = "config.json"   # the whole config, written by older scripts/train.py
LOCK_FILE = ".lock"
# The command-line flags the messages tell the user to pass (defined by the training script).
OVERRIDE_FLAG = "--allow_changed_config"
EXTEND_FLAG = "--allow_extend"

# Dotted config prefixes that do NOT define a run (a prefix covers the field and its children).
IGNORED_PREFIXES: tuple[str, ...] = (
    "data.dir",                 # a path: the same data may live elsewhere
    "data.workers",             # loader processes
    "data.prefetch",            # loader prefetch depth
    "train.eval_batch_size",    # evaluation streaming only
    "train.chunk_steps",        # steps per jitted call (batches depend on the step only)
    "train.unroll",             # scan unrolling
    "train.num_devices",        # data-parallel devices (global batch is fixed)
    "train.distributed",        # multi-host initialisation
    "train.log_every",          # cadence
    "train.eval_every",         # cadence
    "train.checkpoint_every",   # cadence
    "prune",                    # post-training pruning curves
    "sweep",                    # what sweep scripts iterate over
)



class _Absent:
  """A field one of the two configs lacks (shown as ``(absent)``)."""

  def __repr__(self) -> str:
    return "(absent)"


_ABSENT = _Absent()


class WorkdirError(ValueError):
  """The workdir holds another run, or another process is using it."""


def run_fields(config_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The run-defining fields of a (nested) config as ``{dotted.key: value}``, JSON-normalised."""
  if hasattr(config_dict, "to_dict"):  # an ml_collections.ConfigDict
    config_dict = config_dict.to_dict()
  flat: dict[str, Any] = {}
  _flatten(config_dict, "", flat)
  kept = {k: v for k, v in flat.items() if not _ignored(k)}
  # A JSON round trip makes tuples lists etc., so a fresh config compares equal to a stored one.
  return json.loads(json.dumps(kept, sort_keys=True, default=str))


def _flatten(tree: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) or hasattr(value, "to_dict"):
      _flatten(value.to_dict() if hasattr(value, "to_dict") else value, name + ".", out)
    else:
      out[name] = value


def _ignored(key: str) -> bool:
  return any(key == p or key.startswith(p + ".") for p in IGNORED_PREFIXES)


def differences(old: Mapping[str, Any], new: Mapping[str, Any],
                allow_extend: bool = False) -> list[str]:
  """``"field old -> new"`` for each defining field that differs (raised steps ok if extending)."""
  diffs = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
    if a == b:
      continue
    if (key == "train.steps" and allow_extend and isinstance(a, int) and isinstance(b, int)
        and b > a):
      continue
    diffs.append(f"{key} {a!r} -> {b!r}")
  return diffs


def recorded_fields(workdir: str) -> Optional[dict[str, Any]]:
  """The defining fields recorded in ``workdir``, or None if no run is recorded.

  Reads ``run_config.json``; a workdir from before it existed falls back to the whole config
  that ``scripts/train.py`` wrote as ``config.json``.
  """
  for name, key in ((RUN_CONFIG_FILE, "fields"), (LEGACY_CONFIG_FILE, None)):
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
      continue
    try:
      with open(path) as f:
        content = json.load(f)
      return dict(content[key]) if key else run_fields(content)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      raise WorkdirError(f"{path} is unreadable ({type(e).__name__}: {e}); fix or delete it, "
                         "or use a new --workdir") from None
  return None


def check_same_run(workdir: str, config_dict: Mapping[str, Any], allow_extend: bool = False,
                   override: bool = False,
                   log: Optional[Callable[[str], None]] = None) -> None:
  """Raises WorkdirError if ``workdir`` records a run whose defining fields differ.

  Nothing is checked where no run is recorded. ``allow_extend`` accepts a raised
  ``train.steps``; ``override`` accepts every difference (logged through ``log``).
  """
  old = recorded_fields(workdir)
  if old is None:
    return
  new = run_fields(config_dict)
  diffs = differences(old, new, allow_extend)
  if not diffs:
    return
  if override:
    if log is not None:
      log(f"{OVERRIDE_FLAG}: resuming {workdir} with a changed config: " + "; ".join(diffs))
    return
  a, b = old.get("train.steps"), new.get("train.steps")
  steps_raised = isinstance(a, int) and isinstance(b, int) and b > a and not allow_extend
  hint = f", or pass {EXTEND_FLAG} to continue it to more steps" if steps_raised else ""
  raise WorkdirError(
      f"{workdir} holds a run with a different config ({'; '.join(diffs)}); use a new "
      f"--workdir, or pass {OVERRIDE_FLAG} to resume it with the new config anyway{hint}")


def record_run(workdir: str, config_dict: Mapping[str, Any], is_writer: bool = True) -> None:
  """Writes the run-defining fields to ``workdir/run_config.json`` (atomically; writer only)."""
  if not is_writer:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, RUN_CONFIG_FILE)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump({"fields": run_fields(config_dict)}, f, indent=1, sort_keys=True)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class WorkdirLock:
  """Exclusive use of a workdir: ``with WorkdirLock(workdir): train(...)``.

  An ``fcntl.flock`` on ``workdir/.lock`` (released by the OS when the process ends, crash
  included) that records the holder's host, pid and start time for the error a second
  process gets. Only the writer (process 0 of a multi-host run) takes it.
  """

  def __init__(self, workdir: str, is_writer: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._is_writer = is_writer
    self._fd: Optional[int] = None

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirError naming its holder."""
    if not self._is_writer or self._fd is not None:
      return
    if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
      raise WorkdirError(f"workdir {self.workdir} is a file, not a directory; "
                         "use another --workdir")
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise WorkdirError(
          f"{self.workdir} is in use by another run ({_holder(self.path)}; lock {self.path}); "
          "wait for it to end or stop it, or use another --workdir") from None
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since})
    os.ftruncate(fd, 0)
    os.pwrite(fd, (info + "\n").encode(), 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    """Releases the lock (idempotent)."""
    if self._fd is None:
      return
    os.ftruncate(self._fd, 0)
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc: Any) -> None:
    self.release()


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      info = json.loads(f.read())
    return f"host {info['host']}, pid {info['pid']}, since {info['since']}"
  except (OSError, ValueError, KeyError, TypeError):
    return "holder unknown"
