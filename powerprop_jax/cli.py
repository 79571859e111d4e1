"""Shared plumbing for the scripts: config/workdir flags and one-line errors for bad input."""

from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Callable, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def define_flags(default_config: str = "") -> None:
  """--config=configs/X.py (with --config.key=value overrides), --workdir=DIR and
  --allow_changed_config (resume a workdir whose run was defined by another config)."""
  config_flags.DEFINE_config_file("config", default_config or None,
                                  "Path to an ml_collections config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
  flags.DEFINE_bool("allow_changed_config", False,
                    "Continue a workdir whose checkpoint was trained with other run-defining "
                    "config fields (see powerprop_jax/workdir.py) instead of refusing.")
  flags.DEFINE_bool("allow_extend", False,
                    "Continue a finished or stopped run in --workdir with a larger train.steps.")
  flags.mark_flags_as_required(["config", "workdir"])


def is_user_error(error: BaseException) -> bool:
  """The project's own errors about its input (data, config, workdir): a ValueError raised
  by code in this package. Errors raised inside JAX, numpy, ... are not (they are bugs or
  need their traceback)."""
  if not isinstance(error, ValueError):
    return False
  frames = traceback.extract_tb(error.__traceback__)
  return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR)


def run(main: Callable[[], None]) -> None:
  """Runs ``main``; the project's own errors (bad data dir, bad alpha, ...) print one line
  and exit 1; anything else keeps its traceback."""
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    main()
  except ValueError as e:
    if not is_user_error(e):
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def parse_shard(spec: str) -> tuple[int, int]:
  """``"i/n"`` -> (i, n): run every n-th item starting at i (n processes share a job)."""
  try:
    index, count = (int(x) for x in spec.split("/"))
  except ValueError:
    raise ValueError(f"--shard must be i/n with integers, got {spec!r}") from None
  if not 0 <= index < count:
    raise ValueError(f"--shard i/n needs 0 <= i < n, got {spec!r}")
  return index, count


def _unknown_field_line(error: BaseException, argv: Sequence[str]) -> str | None:
  """One line for an override naming a config field that does not exist, or None."""
  frames = traceback.extract_tb(error.__traceback__)
  if not any("config_flags" in f.filename for f in frames):
    return None
  text = str(error).replace("\\n", " ").replace("\n", " ")
  names = (re.findall(r'instead of "(\w+)"', text) or
           re.findall(r"[\\]?'(\w+)[\\]?'", text))
  suggestion = re.search(r'Did you mean "(\w+)"', text)
  bad = next((a.split("=", 1)[0] for a in argv
              if a.startswith("--config.") and names and
              names[0] in a.split("=", 1)[0].split(".")[1:]), None)
  field = bad or (f"field {names[0]!r}" if names else "a --config override")
  hint = f'; did you mean "{suggestion.group(1)}"?' if suggestion else ""
  return f"error: {field} is not a config field{hint} (all fields: powerprop_jax/config.py)"


def run_app(main: Callable[[Sequence[str]], None]) -> None:
  """``absl.app.run(main)``, with a misspelt ``--config.field=...`` reported in one line."""
  try:
    app.run(main)
  except (AttributeError, KeyError) as e:
    line = _unknown_field_line(e, sys.argv)
    if line is None:
      raise
    print(line, file=sys.stderr)
    sys.exit(1)
