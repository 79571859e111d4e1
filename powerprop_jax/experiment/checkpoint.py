"""Orbax checkpointing of a whole training state, with damaged checkpoints detected and skipped.

Each step lives in ``workdir/checkpoints/<step>`` (orbax's layout). After orbax has finished a
save, process 0 writes ``<step>/powerprop_sha256.json``: the sha256 of every file of the step.
It sits inside the step folder, so orbax's step discovery never takes it for a step and its
``max_to_keep`` retention deletes it with the step.

Saves are asynchronous: ``save`` returns once orbax has copied the arrays off the devices;
the files are written, committed (orbax's temporary folder renamed) and checksummed by a
background thread while training goes on. A kill at any moment is safe: a step is trusted only
once its checksum file exists (written atomically, after the commit), and a save first waits
until the previous step is committed and checksummed, so that step (never older) is intact
whatever happens to the one in flight. ``save(..., wait=True)``, ``wait()`` and ``close()``
return only once everything is on disk.

``Checkpointer.restore_latest_intact`` tries steps newest first and restores the first that
passes every check: its checksums match, orbax reads it, and every leaf has the target's shape
and dtype and (floating leaves) only finite values, unless the target leaf itself holds NaN/inf
(a placeholder) or the caller allows it by path. Each step it skips costs one warning line.
Unusable steps newer than the one restored (damaged ones, and stray folders such as
``checkpoints/99999`` that orbax would otherwise count as steps) are moved to
``workdir/checkpoints_damaged/`` for inspection, so they neither take a ``max_to_keep`` slot nor
collide with the steps the resumed run saves again.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import json
import os
from collections.abc import Callable, Collection
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from powerprop_jax import checks
from powerprop_jax.experiment import files

CHECKSUM_FILE = "powerprop_sha256.json"
DAMAGED_DIR = "checkpoints_damaged"
_ORBAX_METADATA = "_CHECKPOINT_METADATA"


class CheckpointError(checks.UserError):
  """No usable checkpoint where one exists, or the checkpoint folder is not a folder."""


def _log_warning(msg: str) -> None:
  logging.warning(msg)


class Checkpointer:
  """Saves a pytree under ``workdir/checkpoints/<step>`` and restores the latest one.

  Restoring needs a target tree of the same structure (e.g. a freshly initialised state),
  so NamedTuple optimizer states come back as the same types. Every process of a multi-host
  run makes the same calls; only process 0 writes checksums and moves damaged steps.
  ``asynchronous=False``: every save blocks until committed (orbax's synchronous path).
  """

  def __init__(self, workdir: str, max_to_keep: int = 2, asynchronous: bool = True):
    if max_to_keep < 2:
      raise ValueError(f"Checkpointer max_to_keep={max_to_keep}: keep at least 2 so a damaged "
                       "latest checkpoint has an intact one to fall back to")
    self.workdir = os.path.abspath(workdir) if files.is_local(workdir) else workdir
    self.directory = os.path.join(self.workdir, "checkpoints")
    for path in (self.workdir, self.directory):
      if files.exists(path) and not files.isdir(path):
        raise CheckpointError(f"{path} is a file, not a directory; move it away or use "
                              "another --workdir")
    # The handler is named so that item_metadata() can read saved shapes and dtypes (without
    # it orbax returns None, with a warning, and the metadata check would check nothing).
    self._manager = ocp.CheckpointManager(
        self.directory, item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             cleanup_tmp_directories=True,
                                             enable_async_checkpointing=asynchronous))
    # One thread per checkpointer waits for each commit and writes its checksums; the
    # training thread touches the manager again only after it is done (``wait``).
    self._commits = concurrent.futures.ThreadPoolExecutor(1, "checkpoint-commit")
    self._pending: Optional[concurrent.futures.Future] = None

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def latest_step(self) -> Optional[int]:
    self.wait()
    return self._manager.latest_step()

  def save(self, step: int, state: Any, wait: bool = False) -> None:
    """Starts saving ``state`` as ``step`` (every process); process 0 writes its checksums
    once orbax has committed it. Returns once orbax has copied the leaves (device arrays
    and numpy ones alike: the caller may then donate or overwrite them), or with
    ``wait=True`` once the step is committed and checksummed. First waits for the previous
    save, and raises here if that one failed."""
    self.wait()
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._pending = self._commits.submit(self._commit, step)
    if wait:
      self.wait()

  def _commit(self, step: int) -> None:
    """Background thread: wait for orbax's commit of ``step``, then write its checksums."""
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      write_checksums(self.step_dir(step))

  def wait(self) -> None:
    """Returns once the last save is committed and checksummed (re-raising its error)."""
    pending, self._pending = self._pending, None
    if pending is not None:
      pending.result()

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Restores ``step`` (default: the latest) with no integrity checks."""
    self.wait()
    step = self._manager.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.StandardRestore(target))

  def restore_latest_intact(
      self, target: Any, log: Callable[[str], None] = _log_warning,
      allow_nonfinite: Collection[str] = ()) -> tuple[Any, Optional[int]]:
    """``(state, step)`` of the newest intact checkpoint, or ``(None, None)`` if there is none.

    Args:
      target: a tree like the saved state (e.g. the freshly initialised state).
      log: gets one warning line per step skipped and one naming what was moved aside.
      allow_nonfinite: dotted leaf paths (or their prefixes, e.g. ``"acc"``) where NaN/inf
        are legitimate values rather than damage. Leaves whose target value already holds
        NaN/inf (placeholders such as a not-yet-measured accuracy matrix) are allowed too.

    Raises:
      CheckpointError: checkpoints exist but none is intact.
    """
    self.wait()
    self._manager.reload()
    steps = sorted(self._manager.all_steps(), reverse=True)
    skipped: list[tuple[int, str, bool]] = []
    for i, step in enumerate(steps):
      state, why, stray = self._try_restore(step, target, allow_nonfinite)
      if why is None:
        _agree(step)
        self._move_aside([s for s, _, _ in skipped], log)
        return state, step
      then = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no older step"
      log(f"checkpoint step {step} ({self.step_dir(step)}) is unusable: {why}; {then}")
      skipped.append((step, why, stray))
    damaged = [(s, why) for s, why, stray in skipped if not stray]
    if damaged:
      raise CheckpointError(
          f"no intact checkpoint in {self.directory} (" +
          "; ".join(f"step {s}: {why}" for s, why in damaged) +
          f"); move {self.directory} away to start the run from scratch")
    _agree(-1)
    self._move_aside([s for s, _, _ in skipped], log)
    return None, None

  def _try_restore(self, step: int, target: Any, allow_nonfinite: Collection[str]
                   ) -> tuple[Any, Optional[str], bool]:
    """``(state, None, False)``, or ``(None, why, stray)`` where ``stray``: not a checkpoint."""
    path = self.step_dir(step)
    if not files.isdir(path) or not any(
        files.exists(os.path.join(path, f)) for f in (_ORBAX_METADATA, CHECKSUM_FILE)):
      return None, f"not an orbax checkpoint (no {_ORBAX_METADATA})", True
    why = verify_checksums(path)
    if why is not None:
      return None, why, False
    try:
      why = _check_metadata(self._manager.item_metadata(step), target)
      if why is not None:
        return None, why, False
      state = self._manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # pylint: disable=broad-except  # orbax raises many types
      return None, f"orbax cannot read it ({type(e).__name__}: {_first_line(e)})", False
    return state, check_leaves(state, target, allow_nonfinite), False

  def _move_aside(self, steps: list[int], log: Callable[[str], None]) -> None:
    """Moves ``steps`` to ``workdir/checkpoints_damaged`` (process 0) and rescans."""
    if not steps:
      return
    dest_dir = os.path.join(self.workdir, DAMAGED_DIR)
    if jax.process_index() == 0:
      files.makedirs(dest_dir)
      stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
      for step in steps:
        dest = os.path.join(dest_dir, str(step))
        if files.exists(dest):
          dest = f"{dest}-{stamp}"
        files.path(self.step_dir(step)).rename(dest)
      log(f"moved unusable checkpoint steps {steps} to {dest_dir} for inspection")
    _barrier("powerprop_checkpoint_moved_aside")
    self._manager.reload()

  def close(self) -> None:
    """Waits for the last save (re-raising its error), then releases orbax's threads."""
    try:
      self.wait()
    finally:
      self._commits.shutdown(wait=True)
      self._manager.close()


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _agree(step: int) -> None:
  """Every process must resume from the same step (they read the same shared files)."""
  if jax.process_count() > 1:
    multihost_utils.assert_equal(np.int64(step), "processes restored different checkpoint "
                                 "steps; check that all hosts see the same workdir")


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  line = lines[0] if lines else ""
  return line if len(line) <= 200 else line[:197] + "..."


def _hash_files(step_dir: str) -> dict[str, str]:
  """``{relative path: sha256}`` of every file under ``step_dir`` except the checksum file."""
  digests = {}
  root = files.path(step_dir)
  for directory, dirs, names in root.walk():
    dirs.sort()
    for name in sorted(names):
      full = directory / name
      rel = os.fspath(full.relative_to(root)).replace(os.sep, "/")
      if rel == CHECKSUM_FILE or rel.startswith(("." + CHECKSUM_FILE, CHECKSUM_FILE + ".tmp")):
        continue
      with full.open("rb") as f:
        digests[rel] = hashlib.file_digest(f, "sha256").hexdigest()
  return digests


def write_checksums(step_dir: str) -> None:
  """Writes ``step_dir/powerprop_sha256.json`` (atomically)."""
  files.atomic_write(os.path.join(step_dir, CHECKSUM_FILE),
                     json.dumps({"sha256": _hash_files(step_dir)}, indent=1, sort_keys=True))


def verify_checksums(step_dir: str) -> Optional[str]:
  """None if every file of ``step_dir`` matches its recorded sha256, else what is wrong."""
  path = os.path.join(step_dir, CHECKSUM_FILE)
  if not files.exists(path):
    return f"no {CHECKSUM_FILE} (its save did not finish, or predates checksums)"
  try:
    expected = dict(json.loads(files.read_text(path))["sha256"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"unreadable {CHECKSUM_FILE} ({type(e).__name__})"
  actual = _hash_files(step_dir)
  problems = ([f"sha256 mismatch in {p}" for p in sorted(expected)
               if p in actual and actual[p] != expected[p]] +
              [f"missing file {p}" for p in sorted(set(expected) - set(actual))] +
              [f"unexpected file {p}" for p in sorted(set(actual) - set(expected))])
  if not problems:
    return None
  more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
  return problems[0] + more


def _leaf_name(keypath: tuple[Any, ...]) -> str:
  return ".".join(ocp.tree.str_keypath(keypath))


def _shape_dtype(x: Any) -> tuple[tuple[int, ...], Any]:
  if hasattr(x, "shape") and hasattr(x, "dtype"):
    return tuple(x.shape), x.dtype
  a = np.asarray(x)
  return a.shape, a.dtype


def _describe(shape: tuple[int, ...], dtype: Any) -> str:
  return f"{getattr(dtype, 'name', dtype)}{list(shape)}"


def _check_metadata(metadata: Any, target: Any) -> Optional[str]:
  """What differs between the saved shapes/dtypes and the target's (orbax would cast dtypes)."""
  saved = {}
  for leaf in jax.tree_util.tree_leaves(getattr(metadata, "tree", metadata)):
    if getattr(leaf, "name", None) and getattr(leaf, "dtype", None) is not None:
      saved[leaf.name] = leaf
  for keypath, x in jax.tree_util.tree_flatten_with_path(target)[0]:
    meta = saved.get(_leaf_name(keypath))
    if meta is None or getattr(meta, "shape", None) is None:
      continue  # orbax's own structure checks cover leaves it does not describe
    want = _shape_dtype(x)
    got = (tuple(meta.shape), meta.dtype)
    if got != want:
      return (f"leaf {_leaf_name(keypath)} was saved as {_describe(*got)}, the run expects "
              f"{_describe(*want)}")
  return None


def _all_finite(x: Any) -> bool:
  """On the host, shard by shard (no per-shape compiles; sharded arrays need no gather)."""
  shards = ([s.data for s in x.addressable_shards if s.replica_id == 0]
            if isinstance(x, jax.Array) else [x])
  return all(bool(np.isfinite(np.asarray(s)).all()) for s in shards)


def check_leaves(state: Any, target: Any, allow_nonfinite: Collection[str] = ()
                 ) -> Optional[str]:
  """None if ``state`` has ``target``'s structure, shapes and dtypes and finite floats."""
  got, got_def = jax.tree_util.tree_flatten_with_path(state)
  want, want_def = jax.tree_util.tree_flatten_with_path(target)
  if got_def != want_def:
    return "its tree structure differs from the run's state"
  for (keypath, x), (_, t) in zip(got, want):
    name = _leaf_name(keypath)
    (shape, dtype), expected = _shape_dtype(x), _shape_dtype(t)
    if (shape, dtype) != expected:
      return f"leaf {name} is {_describe(shape, dtype)}, the run expects {_describe(*expected)}"
    allowed = any(name == p or name.startswith(p + ".") for p in allow_nonfinite)
    if (jnp.issubdtype(dtype, jnp.inexact) and not allowed and not _all_finite(x)
        and _all_finite(t)):  # a NaN already in the target is a placeholder, not damage
      return f"leaf {name} holds NaN or inf"
  return None
