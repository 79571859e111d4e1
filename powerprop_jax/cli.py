"""Shared plumbing for the scripts: config/workdir flags and one-line errors for bad input."""

from __future__ import annotations

import sys
from typing import Callable

from absl import flags
from absl import logging
from ml_collections import config_flags

from powerprop_jax.data import DataError


def define_flags(default_config: str = "") -> None:
  """--config=configs/X.py (with --config.key=value overrides) and --workdir=DIR."""
  config_flags.DEFINE_config_file("config", default_config or None,
                                  "Path to an ml_collections config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
  flags.mark_flags_as_required(["config", "workdir"])


def run(main: Callable[[], None]) -> None:
  """Runs ``main``; user errors (bad data dir, bad alpha, ...) print one line and exit 1."""
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    main()
  except (DataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
