"""Data parallelism with JAX's own machinery: one code path from 1 CPU to N accelerators.

The train state is replicated over a 1-D ``Mesh`` of devices (axis ``"data"``) and every
batch is split along its leading axis (``NamedSharding(mesh, P("data"))``). Under ``jax.jit``
the loss is a mean over the global batch, so the compiler inserts one all-reduce of the
gradients per step, and batch-norm statistics (means over the batch axis) are computed over
the global batch across devices. Multi-host: call :func:`initialize` first on every host;
``jax.devices()`` then lists every host's devices and the same program runs everywhere.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
AXIS = "data"


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """``jax.distributed.initialize`` for multi-host runs (arguments auto-detected on TPU/SLURM)."""
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D data mesh over the first ``num_devices`` devices (0: all of them)."""
  devices = jax.devices()
  n = len(devices) if num_devices == 0 else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"train.num_devices must be in [0, {len(devices)}] (0 = all), got "
                     f"{num_devices}")
  return Mesh(np.asarray(devices[:n]), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh's devices."""
  return NamedSharding(mesh, PartitionSpec(AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  if batch_size % mesh.size:
    raise ValueError(f"train.batch_size {batch_size} must be divisible by the number of "
                     f"devices {mesh.size}")


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Copies every array of ``tree`` to all devices of ``mesh``."""
  return jax.device_put(tree, replicated(mesh))
