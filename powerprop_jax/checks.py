"""Checks of user-given values, each raising one line that names the field and the valid range.

Each module checks the fields it reads (``sparsity.builders.check_config``,
``experiment.train.check_config``, ...) with these helpers; nothing checks on another's behalf.
"""

from __future__ import annotations

from typing import Any, Sequence


class UserError(ValueError):
  """Bad input from the user (a config value, a data set, a workdir, a file): the command-line
  scripts print the message as one line and exit 1. Every such error of the project derives
  from it; any other exception is a bug and keeps its traceback."""


class ConfigError(UserError):
  """A config value that means nothing; the message is one line naming the field."""


def integer(value: Any, field: str, low: int = 0) -> int:
  """``value`` as an int >= ``low`` (bools and non-integral numbers refused)."""
  try:
    ok = not isinstance(value, bool) and float(value).is_integer() and int(value) >= low
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ConfigError(f"{field} must be an integer >= {low}, got {value!r}")
  return int(value)


def choice(value: Any, field: str, choices: Sequence[Any]) -> Any:
  """``value`` if it is one of ``choices``."""
  if value not in choices:
    raise ConfigError(f"{field} must be one of {list(choices)}, got {value!r}")
  return value


def fraction(value: Any, field: str, low: float = 0.0, high: float = 1.0,
             closed_low: bool = True, closed_high: bool = False) -> float:
  """``value`` as a float in the interval from ``low`` to ``high`` (ends as given)."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    v = float("nan")
  above = low <= v if closed_low else low < v
  below = v <= high if closed_high else v < high
  if not (above and below):
    raise ConfigError(f"{field} must be in {'[' if closed_low else '('}{low:g}, {high:g}"
                      f"{']' if closed_high else ')'}, got {value!r}")
  return v


def positive(value: Any, field: str, allow_zero: bool = False) -> float:
  """``value`` as a float > 0 (>= 0 with ``allow_zero``)."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    v = float("nan")
  if not (v >= 0 if allow_zero else v > 0):
    raise ConfigError(f"{field} must be {'>=' if allow_zero else '>'} 0, got {value!r}")
  return v
