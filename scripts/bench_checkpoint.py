"""How long a checkpoint save holds up the training loop: asynchronous against synchronous.

  python scripts/bench_checkpoint.py [--megabytes 400] [--repeats 3] [--workdir DIR]

Saves a state of ``--megabytes`` of float32 device arrays (400 MB: ResNet-50's params, momentum
and masks) with ``experiment.checkpoint.Checkpointer`` both ways, in the same run: the
synchronous save (write, commit, checksums: what the loop waited for before), and the
asynchronous one, whose blocking part is the copy off the devices (the loop goes on while the
background thread writes, commits and checksums). Prints the seconds of each and, last,
``blocking ratio: X`` = async blocking time / sync save time (lower is better).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp

from powerprop_jax.experiment import checkpoint


def _state(megabytes: float) -> dict[str, jax.Array]:
  """~``megabytes`` MB of random float32 in 16 leaves (one per "layer"; random, since
  constant arrays would compress to nothing)."""
  n = int(megabytes * 1e6 / 4 / 16)
  keys = jax.random.split(jax.random.PRNGKey(0), 16)
  return {f"layer{i}": jax.random.normal(k, (n,), jnp.float32) for i, k in enumerate(keys)}


def _time_saves(workdir: str, state, repeats: int, asynchronous: bool) -> tuple[float, float]:
  """(median seconds the caller is blocked, median seconds until committed + checksummed)."""
  ckpt = checkpoint.Checkpointer(workdir, asynchronous=asynchronous)
  blocked, total = [], []
  for step in range(1, repeats + 1):
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    ckpt.save(step, state)
    blocked.append(time.perf_counter() - t0)
    ckpt.wait()
    total.append(time.perf_counter() - t0)
  ckpt.close()
  return statistics.median(blocked), statistics.median(total)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--megabytes", type=float, default=400.0)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--workdir", default="", help="where to write (default: a temp dir)")
  args = parser.parse_args()
  state = _state(args.megabytes)
  with tempfile.TemporaryDirectory(dir=args.workdir or None) as root:
    sync_blocked, _ = _time_saves(f"{root}/sync", state, args.repeats, asynchronous=False)
    async_blocked, async_total = _time_saves(f"{root}/async", state, args.repeats, True)
  print(f"state {args.megabytes:.0f} MB on {jax.devices()[0].platform}, median of "
        f"{args.repeats} saves")
  print(f"synchronous save: {sync_blocked:.3f} s blocking")
  print(f"asynchronous save: {async_blocked:.3f} s blocking, {async_total:.3f} s until "
        "committed and checksummed")
  print(f"blocking ratio: {async_blocked / sync_blocked:.3f}")


if __name__ == "__main__":
  main()
