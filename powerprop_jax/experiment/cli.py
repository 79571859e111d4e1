"""Shared plumbing for the scripts: config/workdir flags and one-line errors for bad input."""

from __future__ import annotations

import difflib
import sys
from typing import Callable, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from powerprop_jax import checks
from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import files
from powerprop_jax.experiment import preemption
from powerprop_jax.experiment import workdir as workdir_lib

# Flags this module defines for a script belong to that script: its --help lists them.
flags.disclaim_key_flags()


def define_flags(default_config: str = "") -> None:
  """--config=configs/X.py (with --config.key=value overrides), --workdir=DIR and
  --allow_changed_config (resume a workdir whose run was defined by another config)."""
  config_flags.DEFINE_config_file("config", default_config or None,
                                  "Path to an ml_collections config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
  flags.DEFINE_bool("allow_changed_config", False,
                    "Continue a workdir whose checkpoint was trained with other run-defining "
                    "config fields (see powerprop_jax/experiment/workdir.py) instead of refusing.")
  flags.DEFINE_bool("allow_extend", False,
                    "Continue a finished or stopped run in --workdir with a larger train.steps.")
  flags.mark_flags_as_required(["config", "workdir"])


def run(main: Callable[[], None]) -> None:
  """Runs ``main``; the project's errors about its input (:class:`checks.UserError`: a bad
  config value, data dir, workdir, ...) print one line and exit 1; a preemption (training
  saved a checkpoint and stopped, :class:`preemption.Preempted`, already logged) exits 0 so
  the scheduler requeues it; anything else keeps its traceback."""
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    workdir = flags.FLAGS["workdir"].value if "workdir" in flags.FLAGS else None
    if workdir:   # an unreachable gs:// workdir: one line now, not a traceback later
      files.check_reachable(workdir)
    main()
  except checks.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except preemption.Preempted:
    sys.exit(0)


def parse_shard(spec: str) -> tuple[int, int]:
  """``"i/n"`` -> (i, n): run every n-th item starting at i (n processes share a job)."""
  try:
    index, count = (int(x) for x in spec.split("/"))
  except ValueError:
    raise checks.ConfigError(f"--shard must be i/n with integers, got {spec!r}") from None
  if not 0 <= index < count:
    raise checks.ConfigError(f"--shard i/n needs 0 <= i < n, got {spec!r}")
  return index, count


def unknown_override(argv: Sequence[str]) -> Optional[str]:
  """One error line for the first ``--config.a.b=...`` in ``argv`` that names no field of
  the config file given by ``--config=FILE[:ARG]`` (with a close match as a hint), or None."""
  argv = list(argv)
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv[:-1]:
    spec = argv[argv.index("--config") + 1]
  if spec is None:
    return None
  file, _, arg = spec.partition(":")
  try:
    module = config_lib.load_module(file)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception:  # pylint: disable=broad-except  (absl reports a broken file itself)
    return None
  fields = set(workdir_lib.flat_fields(config))
  prefixes = {f.rsplit(".", i)[0] for f in fields for i in range(f.count(".") + 1)}
  for a in argv:
    if not a.startswith("--config."):
      continue
    name = a[len("--config."):].split("=", 1)[0]
    if name not in prefixes:
      close = difflib.get_close_matches(name, sorted(prefixes), n=1)
      hint = f'; did you mean "{close[0]}"?' if close else ""
      return (f"error: --config.{name} is not a config field{hint} (all fields: "
              f"powerprop_jax/experiment/config.py)")
  return None


def run_app(main: Callable[[Sequence[str]], None]) -> None:
  """``absl.app.run(main)``, with a misspelt ``--config.field=...`` reported in one line."""
  line = unknown_override(sys.argv[1:])
  if line is not None:
    print(line, file=sys.stderr)
    sys.exit(1)
  app.run(main)
