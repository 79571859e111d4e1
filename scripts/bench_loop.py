"""The whole training loop against its input pipeline alone and its compute alone.

  python scripts/bench_loop.py [--steps 40] [--batch 32] [--image_size 32] [--num_jpegs 64]

Streamed ImageNet-like input (JPEGs of ImageNet sizes written by this script, decoded,
cropped and flipped by ``data.imagenet.train_batches`` in one grain worker process), a small
ResNet (``resnet_tiny``, 1000 classes), Powerpropagation (alpha 2) and Top-KAST 80%. Three
measurements, in this order, in this one process:

* input alone: the loop's feed (next local batch, uint8, onto the device) ``--steps`` times;
* compute alone: the jitted train step on one device-resident batch ``--steps`` times;
* the loop: ``train.train_and_evaluate`` on the stream (its ``images_per_s``: compilation
  excluded), and the old serial loop (next, stack, transfer, step, blocking metric read,
  one step at a time) as the baseline.

On a CPU host, decode and compute get disjoint cores the same way in all of them: the
training process (XLA with one intra-op thread, ``--xla_cpu_multi_thread_eigen=false``) on
core 0, the grain worker on core 1 (``os.sched_setaffinity``). On an accelerator (run with
``JAX_PLATFORMS=cuda`` or ``tpu``: this script defaults to the CPU) nothing is pinned and
``--workers`` decode processes feed the device. The last line is
``loop efficiency: X`` with X = loop steps/s over the slower of input alone and compute
alone (1.0: the loop hides the faster of the two completely).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ON_CPU = os.environ["JAX_PLATFORMS"] == "cpu"
if ON_CPU:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_cpu_multi_thread_eigen=false"
                             " intra_op_parallelism_threads=1").strip()

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import importlib.util
import json
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import metrics as metrics_lib
from powerprop_jax.experiment import parallel, train
from powerprop_jax.experiment.data import augment as augment_lib
from powerprop_jax.experiment.data import base as data_base
from powerprop_jax.experiment.data import imagenet

COMPUTE_CORE, DECODE_CORE = 0, 1


def _bench_input_module():
  """scripts/bench_input.py (its JPEG writer and in-memory record source)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_input.py")
  spec = importlib.util.spec_from_file_location("bench_input", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


ALLOWED = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()


def pin(cores: set[int]) -> None:
  """Runs this thread (and the threads and processes it starts from now on) on ``cores``
  (where this process may run them at all); on a CPU host only."""
  if ALLOWED and ON_CPU:
    os.sched_setaffinity(0, cores & ALLOWED or ALLOWED)


def make_config(batch: int, image_size: int, steps: int, workers: int = 1):
  c = config_lib.base()
  c.alpha = 2.0
  c.data.update({"name": "imagenet2012", "image_size": image_size, "workers": workers,
                 "prefetch": 2})
  c.model.update({"name": "resnet_tiny", "num_classes": 1000})
  c.train.update({"steps": steps, "batch_size": batch, "chunk_steps": 1, "log_every": 0,
                  "eval_every": 0, "checkpoint_every": 0, "label_smoothing": 0.1})
  c.optimizer.update({"momentum": 0.9, "nesterov": True, "learning_rate": 0.1,
                      "weight_decay": 1e-4, "weight_decay_kernels_only": True})
  c.sparsity.update({"method": "topkast", "level": 0.8, "dense_layers": "first,last",
                     "update_every": 100})
  return c


def stream(config, source) -> Callable[[int], object]:
  """``start_step -> iterator of local batches``, its grain worker started on DECODE_CORE."""

  def start(step: int):
    pin({DECODE_CORE})
    it = imagenet.train_batches(config.data, int(config.train.batch_size), int(config.seed),
                                step, 0, 1, source=source)
    first = next(it)   # the worker process exists now, pinned to DECODE_CORE
    pin({COMPUTE_CORE})

    def batches():
      yield first
      yield from it

    return batches()

  return start


def fresh_state(exp, mesh):
  """A copy of the initial state on the mesh (the step donates the state it is given)."""
  return parallel.replicate(jax.tree_util.tree_map(jnp.copy, exp.init_state), mesh)


def steps_per_s(run: Callable[[], None], steps: int) -> float:
  t0 = time.perf_counter()
  run()
  return steps / (time.perf_counter() - t0)


def input_alone(config, start_stream, mesh, steps: int) -> float:
  """The loop's feed (next batch, stacked as one step, onto the device), ``steps`` times."""
  feed = train.streamed_input(start_stream(0), mesh).feed
  jax.block_until_ready(feed(0, 1))

  def run():
    for s in range(steps):
      jax.block_until_ready(feed(s + 1, 1))

  return steps_per_s(run, steps)


def compute_alone(config, exp, start_stream, mesh, steps: int):
  """The jitted step on one device-resident batch; returns (steps/s, chunk_fn, batch xs)."""
  streamed = train.streamed_input(start_stream(0), mesh)
  chunk_fn = train.make_chunk_fn(
      train.make_train_step(exp.model, exp.tx, exp.reparam, 0.1,
                            augment_lib.get_augment(config.train.augment)),
      streamed.batch_fn)
  xs = streamed.feed(0, 1)
  state = fresh_state(exp, mesh)
  state, m = chunk_fn(state, None, xs)
  jax.block_until_ready(m)

  def run():
    nonlocal state
    for _ in range(steps):
      state, metrics = chunk_fn(state, None, xs)
    jax.block_until_ready(metrics)

  return steps_per_s(run, steps), chunk_fn, streamed.batch_fn


def serial_loop(config, exp, chunk_fn, start_stream, mesh, steps: int) -> float:
  """The old loop: per step next(), np.stack, transfer, step, blocking metric read."""
  it = start_stream(0)
  state = fresh_state(exp, mesh)

  def one():
    nonlocal state
    local = next(it)
    stacked = {k: np.stack([v]) for k, v in local.items()}
    state, metrics = chunk_fn(state, None, parallel.global_batch(stacked, mesh,
                                                                 stacked_steps=True))
    jax.device_get(metrics)

  one()
  return steps_per_s(lambda: [one() for _ in range(steps)], steps)


def whole_loop(config, start_stream, steps: int) -> dict:
  """``train.train_and_evaluate`` on the stream; its last record (timing of the steps after
  the first, compilation excluded)."""
  config = config.copy_and_resolve_references()
  config.train.steps = steps + 1
  splits = data_base.DataSplits(
      stream_train=start_stream, num_train=10**6,
      sample_input=np.zeros((1, config.data.image_size, config.data.image_size, 3), np.float32))
  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(config, workdir, splits, log=lambda m: None)
    return metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))[-1]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--num_jpegs", type=int, default=64)
  p.add_argument("--workers", type=int, default=1,
                 help="decode processes (an accelerator host: e.g. 12 of 16 cores)")
  p.add_argument("--out", default="", help="write the results as JSON here")
  args = p.parse_args()

  bench_input = _bench_input_module()
  jpegs = [bench_input.photo_like_jpeg(*bench_input.SIZES[i % len(bench_input.SIZES)], seed=i)
           for i in range(args.num_jpegs)]
  source = bench_input.JpegSource(jpegs)
  config = make_config(args.batch, args.image_size, args.steps, args.workers)
  pin({COMPUTE_CORE})
  mesh = parallel.make_mesh()
  start_stream = stream(config, source)
  exp = train.build_experiment(config, np.zeros((1, args.image_size, args.image_size, 3),
                                                 np.float32))

  result = {"input_alone": input_alone(config, start_stream, mesh, args.steps)}
  result["compute_alone"], chunk_fn, _ = compute_alone(config, exp, start_stream, mesh,
                                                       args.steps)
  result["serial_loop"] = serial_loop(config, exp, chunk_fn, start_stream, mesh, args.steps)
  record = whole_loop(config, start_stream, args.steps)
  result["loop"] = record["images_per_s"] / args.batch
  result["loop_input_wait_fraction"] = record["input_wait_fraction"]
  slower = min(result["input_alone"], result["compute_alone"])
  result["loop_efficiency"] = result["loop"] / slower
  result["serial_loop_efficiency"] = result["serial_loop"] / slower
  result.update(batch=args.batch, image_size=args.image_size, steps=args.steps,
                workers=args.workers, device=jax.devices()[0].device_kind)

  print(f"{len(jpegs)} JPEGs -> {args.image_size}px uint8, batch {args.batch}, resnet_tiny + "
        f"powerprop + Top-KAST 80%, {args.steps} steps each; {result['device']}")
  print(f"input alone:   {result['input_alone']:7.2f} steps/s ({args.workers} grain "
        f"worker(s)" + (f", core {DECODE_CORE})" if ON_CPU else ")"))
  print(f"compute alone: {result['compute_alone']:7.2f} steps/s" +
        (f" (core {COMPUTE_CORE})" if ON_CPU else ""))
  print(f"serial loop (old, baseline): {result['serial_loop']:7.2f} steps/s, efficiency "
        f"{result['serial_loop_efficiency']:.2f}")
  print(f"loop:          {result['loop']:7.2f} steps/s (input wait "
        f"{result['loop_input_wait_fraction']:.0%} of wall time)")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  print(f"loop efficiency: {result['loop_efficiency']:.2f}")


if __name__ == "__main__":
  main()
