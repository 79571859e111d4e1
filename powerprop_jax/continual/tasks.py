"""Permuted MNIST task streams: task t applies a fixed, seeded pixel permutation.

Task 0 is the identity (plain MNIST); task t >= 1 uses
``np.random.default_rng([seed, t]).permutation(784)``. Permutations are applied on the fly
(``images[:, perm]``), so a stream of N tasks stores one copy of the data.
"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

import numpy as np

DataT = TypeVar("DataT")


class PermutedTask(NamedTuple):
  task_id: int
  permutation: np.ndarray   # (D,) int32 pixel order


def permutations(num_tasks: int, num_pixels: int = 784, seed: int = 0) -> list[PermutedTask]:
  """``num_tasks`` tasks; task 0 the identity, task t a permutation seeded by (seed, t)."""
  if num_tasks < 1:
    raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
  out = [PermutedTask(0, np.arange(num_pixels, dtype=np.int32))]
  for t in range(1, num_tasks):
    perm = np.random.default_rng([seed, t]).permutation(num_pixels).astype(np.int32)
    out.append(PermutedTask(t, perm))
  return out


def permute(data: DataT, task: PermutedTask) -> DataT:
  """``data`` (a NamedTuple with ``images`` (N, D) and ``labels``) with every image's pixels
  reordered by the task's permutation."""
  return data._replace(images=np.asarray(data.images)[:, task.permutation])
