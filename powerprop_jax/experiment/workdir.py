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

This module owns every file a run leaves in its workdir and is the one reader of them for
other code (sweeps, studies, ``scripts/reproduce.py``): the run record (:data:`RUN_CONFIG_FILE`,
the one definition of "the same run" above), the metrics (written by
``metrics.MetricsWriter``, read here through ``metrics.read_metrics``), a finished cell's
result rows (:data:`RESULTS_FILE`), and a diverged run's record (:data:`DIVERGED_FILE`).
:func:`status` says what a workdir holds for a config: absent, another config, diverged,
unfinished or finished. Every write goes through ``files.atomic_write``.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Optional

from powerprop_jax import checks
from powerprop_jax.experiment import files

RUN_CONFIG_FILE = "run_config.json"
LEGACY_CONFIG_FILE = "config.json"   # the whole config, written by older scripts/train.py
LOCK_FILE = ".lock"
RESULTS_FILE = "cell_results.json"   # a finished sweep cell's result rows
DIVERGED_FILE = "diverged.json"      # a run stopped at a non-finite loss
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
    "train.compilation_cache",  # where compiled programs are cached
    "train.profile",            # which steps are traced
    "train.peak_tflops",        # what device_utilisation is measured against
    "prune",                    # post-training pruning curves
    "sweep",                    # what sweep scripts iterate over
)



# Recorded facts, not config fields: compared only when both records have them (a run
# recorded before the fingerprint existed, or a status check made without the data).
COMPARED_IF_BOTH = ("data.fingerprint",)


class _Absent:
  """A field one of the two configs lacks (shown as ``(absent)``)."""

  def __repr__(self) -> str:
    return "(absent)"


_ABSENT = _Absent()


class WorkdirError(checks.UserError):
  """The workdir holds another run, or another process is using it."""


def run_fields(config_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The run-defining fields of a (nested) config as ``{dotted.key: value}``, JSON-normalised."""
  kept = {k: v for k, v in flat_fields(config_dict).items() if not _ignored(k)}
  # A JSON round trip makes tuples lists etc., so a fresh config compares equal to a stored one.
  return json.loads(json.dumps(kept, sort_keys=True, default=str))


def _flatten(tree: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) or hasattr(value, "to_dict"):
      _flatten(value.to_dict() if hasattr(value, "to_dict") else value, name + ".", out)
    else:
      out[name] = value


def flat_fields(config_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Every field of a (nested) config as ``{dotted.key: value}``."""
  if hasattr(config_dict, "to_dict"):
    config_dict = config_dict.to_dict()
  flat: dict[str, Any] = {}
  _flatten(config_dict, "", flat)
  return flat


def _ignored(key: str) -> bool:
  return any(key == p or key.startswith(p + ".") for p in IGNORED_PREFIXES)


def _defaults() -> dict[str, Any]:
  """The base config's run-defining fields (what a field absent from an old record meant)."""
  from powerprop_jax.experiment import config as config_lib  # pylint: disable=g-import-not-at-top
  return run_fields(config_lib.base())


def differences(old: Mapping[str, Any], new: Mapping[str, Any],
                allow_extend: bool = False) -> list[str]:
  """``"field old -> new"`` for each defining field that differs (raised steps ok if extending)."""
  diffs = []
  defaults = _defaults()
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
    if a == b or (a is _ABSENT and key in defaults and defaults[key] == b):
      continue   # equal, or a field added since the run was recorded, at its default
    if key in COMPARED_IF_BOTH and (a is _ABSENT or b is _ABSENT):
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
    if not files.exists(path):
      continue
    try:
      content = json.loads(files.read_text(path))
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
    if _has_checkpoints(workdir) and not override:
      raise WorkdirError(
          f"{workdir} holds checkpoints but no run record ({RUN_CONFIG_FILE}), so they cannot "
          f"be checked against this config; use a new --workdir, or pass {OVERRIDE_FLAG} to "
          "resume them with this config anyway")
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


def _has_checkpoints(workdir: str) -> bool:
  return any(n.isdigit() for n in files.listdir(os.path.join(workdir, "checkpoints")))


def record_run(workdir: str, config_dict: Mapping[str, Any], is_writer: bool = True) -> None:
  """Writes the run-defining fields to ``workdir/run_config.json`` (atomically; writer only)."""
  if not is_writer:
    return
  files.atomic_write(os.path.join(workdir, RUN_CONFIG_FILE),
                     json.dumps({"fields": run_fields(config_dict)}, indent=1, sort_keys=True)
                     + "\n")


def run_identity(config_dict: Mapping[str, Any]) -> str:
  """A short hash of the run-defining fields (checkpoints carry it: see ``checkpoint``)."""
  text = json.dumps(run_fields(config_dict), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# What a workdir holds: the readers every other module uses.

ABSENT, OTHER_CONFIG, DIVERGED, UNFINISHED, FINISHED = (
    "absent", "other config", "diverged", "unfinished", "finished")


class RunStatus(NamedTuple):
  state: str                          # one of ABSENT ... FINISHED
  final: Optional[dict[str, Any]]     # the last metrics record (None if there is none)
  detail: str                         # why, for a message


def metrics_records(workdir: str) -> list[dict[str, Any]]:
  """The run's metrics records, one per step (a torn last line skipped); [] if none."""
  from powerprop_jax.experiment import metrics  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, metrics.METRICS_FILE)
  return metrics.read_metrics(path) if files.exists(path) else []


def final_record(workdir: str, steps: int) -> Optional[dict[str, Any]]:
  """The metrics record of step ``steps`` if it is the run's last one, else None."""
  records = metrics_records(workdir)
  return records[-1] if records and int(records[-1]["step"]) == int(steps) else None


def mark_diverged(workdir: str, error: str) -> None:
  """Records that the run in ``workdir`` stopped at a non-finite loss (a result, not a crash)."""
  files.write_json(os.path.join(workdir, DIVERGED_FILE), {"error": str(error)})


def diverged(workdir: str) -> Optional[str]:
  """The divergence message recorded in ``workdir``, or None."""
  record = files.read_json(os.path.join(workdir, DIVERGED_FILE))
  return str(record.get("error", "diverged")) if isinstance(record, dict) else None


def result_fields(config_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The fields a cell's result rows depend on: the run-defining fields plus what is computed
  after training (``prune``: the pruning curves and N:M structures evaluated)."""
  flat = json.loads(json.dumps(flat_fields(config_dict), sort_keys=True, default=str))
  return {k: v for k, v in flat.items() if not _ignored(k) or k.startswith("prune.")}


def write_cell_results(workdir: str, rows: list[dict[str, Any]],
                       config_dict: Mapping[str, Any]) -> None:
  """A finished sweep cell's result rows, with the :func:`result_fields` they came from."""
  files.write_json(os.path.join(workdir, RESULTS_FILE),
                   {"fields": result_fields(config_dict), "rows": rows})


def cell_results(workdir: str, config_dict: Mapping[str, Any]
                 ) -> Optional[list[dict[str, Any]]]:
  """The rows :func:`write_cell_results` left for this config, or None: missing, empty or
  torn, or computed under other :func:`result_fields` (e.g. other pruning structures; the
  cell is then recomputed, its training resumed from the checkpoint)."""
  record = files.read_json(os.path.join(workdir, RESULTS_FILE))
  if not isinstance(record, dict) or "rows" not in record:
    return None
  return list(record["rows"]) if record.get("fields") == result_fields(config_dict) else None


def status(workdir: str, config_dict: Mapping[str, Any], steps_field: str = "train.steps"
           ) -> RunStatus:
  """What ``workdir`` holds for ``config_dict``: ABSENT (nothing recorded), OTHER_CONFIG (a run
  with other defining fields), DIVERGED, UNFINISHED (no record of the last step, the value of
  ``steps_field``) or FINISHED (with its final metrics record)."""
  if not files.isdir(workdir):
    return RunStatus(ABSENT, None, f"{workdir} does not exist")
  try:
    old = recorded_fields(workdir)
  except WorkdirError as e:
    return RunStatus(OTHER_CONFIG, None, str(e))
  records = metrics_records(workdir)
  last = records[-1] if records else None
  if old is None:
    from powerprop_jax.experiment import metrics  # pylint: disable=g-import-not-at-top
    if not files.exists(os.path.join(workdir, metrics.METRICS_FILE)):
      return RunStatus(ABSENT, None, f"{workdir} records no run")
    if last is None:
      return RunStatus(UNFINISHED, None, f"{workdir}: no complete metrics record")
    return RunStatus(OTHER_CONFIG, last, f"{workdir} has metrics but no run record "
                     f"({RUN_CONFIG_FILE}) to check its config against")
  diffs = differences(old, run_fields(config_dict))
  if diffs:
    return RunStatus(OTHER_CONFIG, last, f"{workdir} holds a run of another config ("
                     + "; ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else "") + ")")
  error = diverged(workdir)
  if error is not None:
    return RunStatus(DIVERGED, last, error)
  steps = run_fields(config_dict).get(steps_field)
  if last is None or steps is None or int(last["step"]) != int(steps):
    seen = f"last record at step {int(last['step'])}" if last else "no metrics yet"
    return RunStatus(UNFINISHED, last, f"{workdir}: {seen}, the run ends at step {steps}")
  return RunStatus(FINISHED, last, "")


class WorkdirLock:
  """Exclusive use of a workdir: ``with WorkdirLock(workdir): train(...)``.

  Local workdir: an ``fcntl.flock`` on ``workdir/.lock`` (released by the OS when the process
  ends, crash included) that records the holder's host, pid and start time for the error a
  second process gets. Object store (``gs://``...): no lock primitive exists there, so the
  lock degrades to a record file created if absent and deleted on release: a second run is
  refused while it exists, but a run that crashed leaves it behind (the error says to delete
  it once no run uses the workdir), and two runs starting in the same instant can both pass.
  Only the writer (process 0 of a multi-host run) takes it. The workdir is checked to be
  reachable first (``files.check_reachable``).
  """

  def __init__(self, workdir: str, is_writer: bool = True,
               log: Optional[Callable[[str], None]] = None):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._is_writer = is_writer
    self._log = log
    self._fd: Optional[int] = None
    self._record = False

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirError naming its holder."""
    if not self._is_writer or self._fd is not None or self._record:
      return
    try:
      files.check_reachable(self.workdir)
    except files.StorageError as e:
      raise WorkdirError(str(e)) from None
    if not files.is_local(self.workdir):
      self._acquire_record()
      return
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise WorkdirError(
          f"{self.workdir} is in use by another run ({_holder(self.path)}; lock {self.path}); "
          "wait for it to end or stop it, or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (_holder_info() + "\n").encode(), 0)
    os.fsync(fd)
    self._fd = fd

  def _acquire_record(self) -> None:
    if files.exists(self.path) and files.read_text(self.path).strip():
      raise WorkdirError(
          f"{self.workdir} is in use by another run ({_holder(self.path)}; lock record "
          f"{self.path}); object stores have no real lock, so a run that crashed leaves this "
          "record behind: delete it once no run uses the workdir, or use another --workdir")
    files.atomic_write(self.path, _holder_info() + "\n")
    self._record = True
    if self._log is not None:
      self._log(f"{self.workdir}: object store, so the workdir lock is a record file "
                f"({self.path}), not an OS lock")

  def release(self) -> None:
    """Releases the lock (idempotent)."""
    if self._record:
      files.path(self.path).unlink(missing_ok=True)
      self._record = False
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


def _holder_info() -> str:
  since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since})


def _holder(path: str) -> str:
  try:
    info = json.loads(files.read_text(path))
    return f"host {info['host']}, pid {info['pid']}, since {info['since']}"
  except (OSError, ValueError, KeyError, TypeError):
    return "holder unknown"
