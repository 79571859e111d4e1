"""Asynchronous checkpoints survive a kill at any moment: a real process saving back to back is
SIGKILLed at random times (mid-write, mid-commit, mid-checksum, mid-retention); after each
kill no checksum file is wrong, the newest intact step holds exactly what was saved at it, and
at most the save in flight and the one before it are lost."""

import os
import re
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from powerprop_jax.experiment import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r'''
import sys
import jax, jax.numpy as jnp, numpy as np
from powerprop_jax.experiment import checkpoint
ckpt = checkpoint.Checkpointer(sys.argv[1])
step = ckpt.latest_step() or 0
host = np.zeros(4096, np.int64)
while True:
  step += 1
  host[:] = step
  state = {"w": jnp.full((512, 1024), float(step)), "host": host, "step": np.array(step, np.int64)}
  print(f"saving {step}", flush=True)
  ckpt.save(step, state)
  host[:] = -1                 # the caller's numpy buffer is reused at once
  state["w"].delete()          # and its device buffer donated to the next step
'''


def _target():
  return {"w": jnp.zeros((512, 1024)), "host": np.zeros(4096, np.int64),
          "step": np.array(0, np.int64)}


def _run_and_kill(workdir, delay: float) -> int:
  """Starts the saver, SIGKILLs it ``delay`` s after its first save; the last step it began."""
  proc = subprocess.Popen([sys.executable, "-c", WORKER, str(workdir)], cwd=ROOT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  first = ""
  while not first.startswith("saving"):   # (a library may warn first)
    line = proc.stdout.readline()
    assert line, first + proc.stdout.read()[-2000:]   # it ended before saving
    first = line if line.startswith("saving") else first + line
  time.sleep(delay)
  proc.send_signal(signal.SIGKILL)
  rest, _ = proc.communicate(timeout=60)
  begun = [int(n) for n in re.findall(r"^saving (\d+)$", first + rest, re.M)]
  assert "Traceback" not in rest, rest[-3000:]
  return max(begun)


@pytest.mark.slow
def test_a_kill_at_any_moment_leaves_intact_checkpoints(tmp_path):
  rng = np.random.default_rng(0)
  steps_dir = tmp_path / "checkpoints"
  restored_steps = []
  for delay in [0.0, *rng.uniform(0.05, 1.5, size=6)]:
    last_begun = _run_and_kill(tmp_path, float(delay))
    failing = {}   # steps whose checksum file exists but does not verify
    for name in os.listdir(steps_dir):
      if (steps_dir / name / checkpoint.CHECKSUM_FILE).exists():
        why = checkpoint.verify_checksums(str(steps_dir / name))
        if why is not None:
          failing[int(name)] = why
    logs = []
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    try:
      state, step = ckpt.restore_latest_intact(_target(), log=logs.append)
    finally:
      ckpt.close()
    # "saving N" printed means save(N - 1) returned, which waited for N - 2's checksums.
    assert (step or 0) >= last_begun - 2, (step, last_begun, logs)
    # A checksum file is never wrong: the only step allowed to fail its checksums is an
    # older one that orbax's retention was deleting (files gone) when the kill came.
    assert all(s < (step or 0) and why.startswith("missing file")
               for s, why in failing.items()), (failing, step)
    if step is None:
      continue
    np.testing.assert_array_equal(np.asarray(state["w"]), np.full((512, 1024), float(step)))
    np.testing.assert_array_equal(state["host"], np.full(4096, step))
    assert int(state["step"]) == step
    restored_steps.append(step)
  assert restored_steps == sorted(restored_steps) and restored_steps[-1] > 2, restored_steps


def test_save_returns_before_the_commit_and_close_waits(tmp_path):
  """The training thread gets control back while the step is still being written; ``wait``
  (and ``close``) return only once it is committed with its checksums."""
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(1, {"w": jnp.ones((2048, 1024))})
  pending = ckpt._pending   # pylint: disable=protected-access
  ckpt.wait()
  assert pending is not None and pending.done()
  assert checkpoint.verify_checksums(ckpt.step_dir(1)) is None
  ckpt.save(2, {"w": jnp.full((8,), 2.0)}, wait=True)
  assert checkpoint.verify_checksums(ckpt.step_dir(2)) is None
  ckpt.save(3, {"w": jnp.full((8,), 3.0)})
  ckpt.close()
  assert checkpoint.verify_checksums(ckpt.step_dir(3)) is None
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]


def test_a_failed_background_save_raises_in_the_training_thread(tmp_path, monkeypatch):
  ckpt = checkpoint.Checkpointer(str(tmp_path))

  def broken(step_dir):
    raise OSError(f"disk full writing {step_dir}")
  monkeypatch.setattr(checkpoint, "write_checksums", broken)
  ckpt.save(1, {"w": jnp.ones(4)})
  with pytest.raises(OSError, match="disk full"):
    ckpt.save(2, {"w": jnp.ones(4)})
  ckpt.close()
