"""Preemption: a scheduler's SIGTERM stops training at a step every process agrees on.

The training loop asks :meth:`PreemptionWatch.reached` once per chunk (a local check, no host
round trip) and, when it answers True, saves a checkpoint at the current step and raises
:class:`Preempted`: the run is neither failed nor finished, so no caller may take its state
for a result (a sweep records no row for it); the scripts exit 0 on it (``cli.run``) and a
rerun of the same command resumes from that step.

* One process: SIGTERM sets a flag (the handler is installed only while training, in the
  main thread; the previous handler is restored after).
* Several processes (``jax.distributed``): JAX's preemption sync manager receives the notice
  on any host and picks the next sync point every host reaches
  (``multihost_utils.reached_preemption_sync_point``); every process calls it with the same
  ids (the chunk count since the run (re)started), so they all stop after the same step.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Optional

import jax
from absl import logging
from jax.experimental import multihost_utils


class Preempted(Exception):
  """Training stopped at a preemption notice with a checkpoint at ``step`` (of ``steps``) in
  ``workdir``; ``state`` is the state saved there."""

  def __init__(self, step: int, steps: int, workdir: str, state: Any = None):
    super().__init__(f"preempted: stopped at step {step} of {steps} with a checkpoint in "
                     f"{workdir}; rerun the same command to resume")
    self.step, self.steps, self.workdir, self.state = step, steps, workdir, state


class PreemptionWatch:
  """Context manager: ``with PreemptionWatch() as watch: ... if watch.reached(i): save``."""

  def __init__(self, signum: int = signal.SIGTERM):
    self.signum = signum
    self._flag = threading.Event()
    self._previous: Optional[Any] = None
    self._multi = False
    self._sync_available = True

  def __enter__(self) -> "PreemptionWatch":
    self._multi = jax.process_count() > 1
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(self.signum, self._on_signal)
    return self

  def __exit__(self, *exc: Any) -> None:
    if self._previous is not None:
      signal.signal(self.signum, self._previous)
      self._previous = None

  def _on_signal(self, signum: int, frame: Any) -> None:
    del signum, frame
    self._flag.set()

  def request(self) -> None:
    """Asks this process to stop as if it had received the signal (one process only)."""
    self._flag.set()

  def reached(self, sync_id: int) -> bool:
    """True once at the agreed point: every process gets the same answer for ``sync_id``
    (0, 1, 2, ...: one call per chunk, the same sequence on every process)."""
    if not self._multi:
      return self._flag.is_set()
    if not self._sync_available:
      return False
    try:
      return multihost_utils.reached_preemption_sync_point(sync_id)
    except RuntimeError as e:   # jax_enable_preemption_service off: no agreed step
      logging.warning("preemption: no sync manager (%s); SIGTERM will end the run unsaved", e)
      self._sync_available = False
      return False
