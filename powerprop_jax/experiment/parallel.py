"""Data parallelism with JAX's own machinery: one code path from 1 CPU to N accelerators.

The train state is replicated over a 1-D ``Mesh`` of devices (axis ``"data"``) and every
batch is split along its leading axis (``NamedSharding(mesh, P("data"))``). Under ``jax.jit``
the loss is a mean over the global batch, so the compiler inserts one all-reduce of the
gradients per step, and batch-norm statistics (means over the batch axis) are computed over
the global batch across devices. Multi-host: call :func:`maybe_initialize` (or
:func:`initialize`) first on every host; ``jax.devices()`` then lists every host's devices, the
mesh spans them all, each host feeds its slice of the global batch (:func:`global_batch`) and
the same program runs everywhere.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any, Iterable, Iterator, Mapping, Optional, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
T = TypeVar("T")
AXIS = "data"


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """``jax.distributed.initialize`` for multi-host runs (arguments auto-detected on TPU/SLURM)."""
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def _int_env(environ: Mapping[str, str], name: str) -> int:
  try:
    return int(environ.get(name, "0"))
  except ValueError:
    return 0


def distributed_env(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """Why the environment asks for ``jax.distributed.initialize()`` (None: it does not).

  Cheap checks only (no network): ``JAX_COORDINATOR_ADDRESS``; a SLURM step of > 1 task; an
  Open MPI launch of > 1 rank; a multi-host TPU slice (``TPU_WORKER_HOSTNAMES`` lists > 1).
  """
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS is set"
  if "SLURM_STEP_NODELIST" in environ and _int_env(environ, "SLURM_NTASKS") > 1:
    return f"SLURM step with {environ['SLURM_NTASKS']} tasks"
  if "OMPI_MCA_orte_hnp_uri" in environ and _int_env(environ, "OMPI_COMM_WORLD_SIZE") > 1:
    return f"Open MPI launch of {environ['OMPI_COMM_WORLD_SIZE']} ranks"
  if len([h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
    return "multi-host TPU (TPU_WORKER_HOSTNAMES)"
  return None


def maybe_initialize(distributed: bool) -> None:
  """``jax.distributed.initialize()`` (at most once) if ``distributed`` or the env asks for it.

  Call before anything touches the devices; afterwards ``jax.devices()`` lists all hosts'.
  """
  if jax.distributed.is_initialized() or not (distributed or distributed_env()):
    return
  jax.distributed.initialize()


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D data mesh over the first ``num_devices`` devices (0: all, of all processes).

  Devices are ordered process by process, so process p's devices hold rows
  [p B/P, (p+1) B/P) of a global batch: the rows its input pipeline reads.
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  n = len(devices) if num_devices == 0 else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"train.num_devices must be in [0, {len(devices)}] (0 = all), got "
                     f"{num_devices}")
  if n != len(devices) and jax.process_count() > 1:
    raise ValueError(f"train.num_devices must be 0 (all {len(devices)} devices) in a run of "
                     f"{jax.process_count()} processes, got {num_devices}")
  return Mesh(np.asarray(devices[:n]), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh's devices."""
  return NamedSharding(mesh, PartitionSpec(AXIS))


def padded_batch(batch_size: int, num_devices: int) -> int:
  """The smallest multiple of ``num_devices`` that is >= ``batch_size`` (>= 1).

  Evaluation batches are padded to it (padding rows carry ``mask`` False), so any
  ``train.eval_batch_size`` runs on any slice and the accuracy stays exact.
  """
  if num_devices < 1:
    raise ValueError(f"num_devices must be >= 1, got {num_devices}")
  return max(1, -(-batch_size // num_devices)) * num_devices


def global_batch(local_batch: PyTree, mesh: Mesh, stacked_steps: bool = False) -> PyTree:
  """Each leaf (B/P, ...) of this process's batch -> one global (B, ...) ``jax.Array``.

  The global array is split along its batch axis over every device of every host
  (``P("data")``); process p's rows are those its local devices hold, in process order.
  ``stacked_steps``: leaves are (K, B/P, ...) stacks of K steps' batches -> (K, B, ...),
  split along axis 1 (``P(None, "data")``).
  """
  spec = PartitionSpec(None, AXIS) if stacked_steps else PartitionSpec(AXIS)
  sharding = NamedSharding(mesh, spec)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      local_batch)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Copies every array of ``tree`` to all devices of ``mesh``."""
  return jax.device_put(tree, replicated(mesh))


_END = object()


_JOIN_TIMEOUT_S = 60.0   # how long closing a prefetch waits for the item being made


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[tuple[T, float]]:
  """``items`` made by a background thread up to ``depth`` ahead of the consumer.

  Yields (item, seconds the consumer waited for it). Make each item a device array (e.g. a
  ``global_batch``): then reading, stacking and the host-to-device transfer of the next
  items run while the devices compute on this one (as flax's ``prefetch_to_device``). An
  exception in the thread is raised in the consumer; closing the generator stops the thread
  and waits (up to a minute) for the item it is making.
  """
  if depth < 1:
    raise ValueError(f"prefetch depth must be >= 1, got {depth}")
  slots: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(entry) -> bool:
    while not stop.is_set():
      try:
        slots.put(entry, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce() -> None:
    try:
      for item in items:
        if not put((item, None)):
          return
      put((_END, None))
    except BaseException as e:  # pylint: disable=broad-except (re-raised in the consumer)
      put((None, e))

  producer = threading.Thread(target=produce, daemon=True, name="prefetch")
  producer.start()
  try:
    while True:
      t0 = time.perf_counter()
      item, error = slots.get()
      waited = time.perf_counter() - t0
      if error is not None:
        raise error
      if item is _END:
        return
      yield item, waited
  finally:
    # Wait for the item being made: a daemon thread still inside a transfer (C++) when the
    # interpreter exits aborts the process ("FATAL: exception not rethrown").
    stop.set()
    producer.join(timeout=_JOIN_TIMEOUT_S)
