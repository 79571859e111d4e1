"""The path layer every file a run writes goes through, and its one atomic write.

Paths are ``etils.epath`` paths, so a workdir may be local or on an object store
(``gs://...``, ``s3://...``) that epath's backends reach (gcsfs / s3fs, or TensorFlow's
gfile). :func:`atomic_write` never leaves a torn file: it writes a temporary sibling (flushed
and fsynced where the file system has an fsync) and renames it over the target, so a reader
sees the old content or the new, never a mix, and a kill at any moment leaves the previous
good file. :func:`check_reachable` runs first on every workdir: a remote path that cannot be
reached fails in one line and nothing local is created in its place (``os`` functions would
make ``./gs:/bucket/...``).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Union

from etils import epath

from powerprop_jax import checks

PathLike = Union[str, os.PathLike, epath.Path]


def path(p: PathLike) -> epath.Path:
  """``p`` as an epath.Path (``gs://bucket/x`` stays remote; a local path stays local)."""
  return epath.Path(p)


def is_local(p: PathLike) -> bool:
  """Whether ``p`` is on the local file system (no ``scheme://``)."""
  return "://" not in os.fspath(p)


class StorageError(checks.UserError):
  """A workdir that cannot be reached or written (one line naming it and the cause)."""


def join(p: PathLike, *parts: str) -> str:
  """``p/part/...`` as a string that keeps a ``scheme://`` prefix intact."""
  return os.fspath(path(p).joinpath(*parts))


def exists(p: PathLike) -> bool:
  return path(p).exists()


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def listdir(p: PathLike) -> list[str]:
  """Names in directory ``p`` ([] if it does not exist)."""
  d = path(p)
  return sorted(c.name for c in d.iterdir()) if d.is_dir() else []


def makedirs(p: PathLike) -> None:
  path(p).mkdir(parents=True, exist_ok=True)


def read_text(p: PathLike) -> str:
  return path(p).read_text()


def check_reachable(p: PathLike, what: str = "workdir") -> None:
  """Raises :class:`StorageError` unless directory ``p`` exists or can be made, and takes a
  small write; a local path is left to the code that writes it (nothing is probed).
  ``what`` names the directory in the message (e.g. "--out")."""
  if is_local(p):
    if os.path.exists(p) and not os.path.isdir(p):
      raise StorageError(f"{what} {os.fspath(p)} is a file, not a directory; use another")
    return
  try:   # an unknown scheme (a typo such as gss://) fails here too, in the same line
    probe = path(p) / f".reachable.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    makedirs(p)
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except  (any backend's error, one line)
    cause = str(e).splitlines()[0] if str(e) else ""
    raise StorageError(f"{what} {os.fspath(p)} cannot be reached or written "
                       f"({type(e).__name__}: {cause}); check the path, the credentials and "
                       "that the storage backend is installed (gs://: pip install gcsfs; "
                       "s3://: pip install s3fs)") from None


def atomic_write(p: PathLike, data: Union[str, bytes]) -> None:
  """Writes ``data`` to ``p`` all at once (temporary sibling + rename); makes the parent."""
  target = path(p)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.parent / f".{target.name}.tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}"
  payload = data.encode() if isinstance(data, str) else data
  try:
    if is_local(target):
      with open(os.fspath(tmp), "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
      os.replace(os.fspath(tmp), os.fspath(target))
    else:
      tmp.write_bytes(payload)
      tmp.replace(target)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise


def write_json(p: PathLike, obj: Any) -> None:
  """``obj`` as indented JSON, atomically."""
  atomic_write(p, json.dumps(obj, indent=1, sort_keys=False, default=_json_default) + "\n")


def read_json(p: PathLike, default: Any = None) -> Any:
  """The JSON in ``p``; ``default`` if the file is missing, empty or not valid JSON (a file
  cut short by a crash in a writer that did not use :func:`atomic_write`)."""
  target = path(p)
  try:
    text = target.read_text()
  except (FileNotFoundError, NotADirectoryError):
    return default
  try:
    return json.loads(text)
  except ValueError:
    return default


def _json_default(value: Any) -> Any:
  if hasattr(value, "tolist"):   # numpy / jax scalars and arrays
    return value.tolist()
  return str(value)
