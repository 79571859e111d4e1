"""What every input pipeline shares: the in-memory ``Dataset``, ``DataError`` and the
step-indexed batch stream (a pure function of (seed, step), so resumed runs see the same
batches and every host can compute its own slice of a global batch)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from powerprop_jax import checks

Batch = dict[str, jax.Array]
IMAGENET_MEAN = (0.485, 0.456, 0.406)   # per RGB channel, of x / 255
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(checks.UserError):
  """A data set that cannot be found, read or trusted; the message is one line for the user."""


class Dataset(NamedTuple):
  images: np.ndarray   # (N, ...) float32
  labels: np.ndarray   # (N,) int32


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order of the n examples in epoch ``epoch``: a permutation seeded by (seed, epoch)."""
  return np.random.default_rng([seed, int(epoch)]).permutation(n)


def batch_indices(seed: int, start_step: int, num_steps: int, batch_size: int, n: int
                  ) -> np.ndarray:
  """(num_steps, batch_size) example indices of steps [start_step, start_step + num_steps).

  The stream is shuffle-repeat-batch: epoch e is ``epoch_permutation(seed, e, n)``, and
  batches run on across epoch boundaries. A pure function of its arguments.
  """
  positions = np.arange(start_step * batch_size, (start_step + num_steps) * batch_size,
                        dtype=np.int64)
  epochs, offsets = np.divmod(positions, n)
  out = np.empty_like(positions)
  for e in np.unique(epochs):
    sel = epochs == e
    out[sel] = epoch_permutation(seed, int(e), n)[offsets[sel]]
  return out.reshape(num_steps, batch_size).astype(np.int32)


def gather_batch(data: Dataset, idx: jax.Array) -> Batch:
  """{"image": data.images[idx], "label": data.labels[idx]} (on device inside jit)."""
  return {"image": data.images[idx], "label": data.labels[idx]}


def normalise_uint8(batch: Batch) -> Batch:
  """uint8 images (..., 3) -> float32 ``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD`` per
  channel, on the device (inside jit); a batch of any other image dtype is returned as is.

  Streamed images cross the host-to-device link as uint8 (4x fewer bytes than float32).
  """
  images = batch["image"]
  if images.dtype != jnp.uint8:
    return batch
  mean, std = jnp.asarray(IMAGENET_MEAN, jnp.float32), jnp.asarray(IMAGENET_STD, jnp.float32)
  return {**batch, "image": (images.astype(jnp.float32) / 255.0 - mean) / std}


def local_slice(global_batch: int, process_index: int, process_count: int) -> slice:
  """The part of each global batch that process ``process_index`` of ``process_count`` holds."""
  if global_batch % process_count:
    raise DataError(f"the global batch {global_batch} does not divide over {process_count} "
                    "processes; pick a multiple")
  size = global_batch // process_count
  return slice(process_index * size, (process_index + 1) * size)


def local_batches(data: Dataset, seed: int, start_step: int, global_batch: int,
                  process_index: int = 0, process_count: int = 1
                  ) -> Iterator[dict[str, np.ndarray]]:
  """This process's part of the in-memory batch stream from ``start_step`` on (host arrays).

  The union over processes of step s's local batches is ``batch_indices(seed, s, 1, ...)``.
  """
  part = local_slice(global_batch, process_index, process_count)
  step = start_step
  while True:
    idx = batch_indices(seed, step, 1, global_batch, len(data.labels))[0][part]
    yield {"image": np.asarray(data.images[idx]), "label": np.asarray(data.labels[idx])}
    step += 1


def padded_batches(data: Dataset, global_batch: int, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """The whole split in order, in global batches of ``global_batch`` (the last one padded
  with copies of example 0), this process's part of each: {"image", "label", "mask"} where
  ``mask`` is False on padding, so sums over masked batches are exact over the split."""
  part = local_slice(global_batch, process_index, process_count)
  n = len(data.labels)
  for start in range(0, n, global_batch):
    idx = np.arange(start, start + global_batch)
    mask = idx < n
    idx = np.where(mask, idx, 0)[part]
    yield {"image": np.asarray(data.images[idx]), "label": np.asarray(data.labels[idx]),
           "mask": mask[part]}


@dataclasses.dataclass
class DataSplits:
  """The inputs of a run: in-memory splits (MNIST, CIFAR), or a streamed train iterator
  factory and streamed evaluation splits (ImageNet).

  ``validation``/``test``: a Dataset, or a callable ``split(global_batch)`` returning an
  iterable of this process's local evaluation batches {"image", "label", "mask"} of
  ``global_batch`` examples over all processes (the trainer pads ``train.eval_batch_size``
  to a multiple of the device count). ``stream_train(start_step)``: an
  iterator of this process's local train batches from ``start_step`` on.
  """
  train: Optional[Dataset] = None
  validation: Optional[Any] = None
  test: Optional[Any] = None
  stream_train: Optional[Callable[[int], Iterator[dict[str, np.ndarray]]]] = None
  sample_input: Optional[np.ndarray] = None
  num_train: int = 0

  def fingerprint(self) -> str:
    """A short hash of what the data are: every in-memory split's labels and a strided sample
    of its images (shapes and dtypes included); for streamed data, the training set size."""
    digest = hashlib.sha256(str(self.num_train).encode())
    for split in (self.train, self.validation, self.test):
      if isinstance(split, Dataset):
        images, labels = np.asarray(split.images), np.asarray(split.labels)
        stride = max(1, len(images) // 1000)
        for array in (labels, images[::stride]):
          digest.update(f"{array.shape}{array.dtype}".encode())
          digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]

  def as_dict(self) -> dict[str, Any]:
    """{"train", "validation", "test"} (in-memory data sets)."""
    return {"train": self.train, "validation": self.validation, "test": self.test}

  @classmethod
  def from_datasets(cls, datasets: dict[str, Dataset]) -> "DataSplits":
    train = datasets["train"]
    return cls(train, datasets.get("validation"), datasets.get("test"),
               sample_input=np.asarray(train.images[:1]), num_train=len(train.labels))
