"""The path layer every file a run writes goes through, and its one atomic write.

Paths are ``etils.epath`` paths, so a workdir may be local or on an object store
(``gs://...``) that epath's backends reach. :func:`atomic_write` never leaves a torn file: it
writes a temporary sibling (flushed and fsynced where the file system has an fsync) and
renames it over the target, so a reader sees the old content or the new, never a mix, and a
kill at any moment leaves the previous good file.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Union

from etils import epath

PathLike = Union[str, os.PathLike, epath.Path]


def path(p: PathLike) -> epath.Path:
  """``p`` as an epath.Path (``gs://bucket/x`` stays remote; a local path stays local)."""
  return epath.Path(p)


def is_local(p: PathLike) -> bool:
  """Whether ``p`` is on the local file system (no ``scheme://``)."""
  return "://" not in os.fspath(p)


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
      tmp.rename(target)
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
