"""MNIST with the official Powerpropagation split: 55k train, last 5k of train held out, 10k test.

Two sources give identical arrays:
* ``"tfds"``: ``tfds.data_source("mnist")``, prepared beforehand (never downloads);
* ``"idx"``: the four original IDX files (gzipped or not) in a directory.
``"auto"`` means ``idx`` whenever ``data_dir`` is set (missing IDX files are an error, never a
silent download) and tfds only when it is ``""``. Every split is checked as it loads
(``checks.check_split``). Images come out flattened to (N, 784) float32 in [0, 1]; labels (N,)
int32.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from powerprop_jax.experiment.data.base import DataError, Dataset
from powerprop_jax.experiment.data.checks import check_num_validation, check_split

NUM_CLASSES = 10

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_idx(data_dir: str, stem: str) -> str | None:
  for name in (stem, stem + ".gz"):
    path = os.path.join(data_dir, name)
    if os.path.isfile(path):
      return path
  return None


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (optionally gzipped) into a uint8 array of its declared shape."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
    first = (str(e).strip().splitlines() or [""])[0]
    raise DataError(f"cannot read IDX file {path} ({type(e).__name__}: {first}); it is "
                    f"truncated, corrupt or unreadable: re-copy it") from None
  if len(raw) < 4:
    raise DataError(f"{path} is not an IDX file: {len(raw)} bytes")
  zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
  if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
    raise DataError(f"{path} is not a uint8 IDX file (header {raw[:4].hex()})")
  header = 4 + 4 * ndim
  shape = struct.unpack(">" + "I" * ndim, raw[4:header])
  if len(raw) - header != int(np.prod(shape)):
    raise DataError(f"{path} is truncated or corrupt: header says shape {shape}, "
                    f"found {len(raw) - header} data bytes; re-copy it")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def has_idx_files(data_dir: str) -> bool:
  """Whether ``data_dir`` holds all four IDX files (gzipped or not)."""
  return bool(data_dir) and all(_find_idx(data_dir, s) for s in IDX_FILES.values())


def _load_idx(data_dir: str) -> dict[str, np.ndarray]:
  if not os.path.isdir(data_dir):
    raise DataError(f"MNIST data dir {data_dir!r} does not exist")
  missing = [s for s in IDX_FILES.values() if _find_idx(data_dir, s) is None]
  if missing:
    raise DataError(f"MNIST data dir {data_dir!r} lacks IDX files: {', '.join(missing)} "
                    f"(.gz or not); put all four there, or set data.dir='' to use tfds")
  return {k: read_idx(_find_idx(data_dir, s)) for k, s in IDX_FILES.items()}


def _as_dataset(images: np.ndarray, labels: np.ndarray) -> Dataset:
  flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
  return Dataset(flat, labels.astype(np.int32))


def load_mnist(source: str = "auto", data_dir: str = "", num_validation: int = 5000
               ) -> dict[str, Dataset]:
  """Loads MNIST as {"train", "validation", "test"} Datasets (the last ``num_validation``
  training images form the validation split)."""
  if data_dir and not os.path.isdir(data_dir):
    raise DataError(f"MNIST data dir {data_dir!r} does not exist")
  if source == "auto":
    source = "idx" if data_dir else "tfds"
  if source == "idx":
    if not data_dir:
      raise DataError("data.source='idx' needs data.dir: set --config.data.dir=DIR holding "
                      "the four MNIST IDX files")
    arrays, where = _load_idx(data_dir), f"MNIST IDX dir {data_dir!r}"
  elif source == "tfds":
    from powerprop_jax.experiment.data import tfds_source  # pylint: disable=g-import-not-at-top
    arrays = tfds_source.load_arrays("mnist", data_dir,
                                     "offline, set data.dir=DIR holding the four IDX files")
    where = "tfds mnist"
  else:
    raise DataError(f"data.source must be 'auto', 'idx' or 'tfds', got {source!r}")
  check_split("train", arrays["train_images"], arrays["train_labels"], NUM_CLASSES, where)
  check_split("test", arrays["test_images"], arrays["test_labels"], NUM_CLASSES, where,
              image_shape=arrays["train_images"].shape[1:])
  n = len(arrays["train_images"])
  if n < len(arrays["test_images"]):
    raise DataError(f"{where}: the train files hold {n} images but the test files "
                    f"{len(arrays['test_images'])}: MNIST trains on 60,000 and tests on 10,000; "
                    "are the train-* and t10k-* files swapped?")
  check_num_validation(num_validation, n, where)
  cut = n - num_validation
  return {
      "train": _as_dataset(arrays["train_images"][:cut], arrays["train_labels"][:cut]),
      "validation": _as_dataset(arrays["train_images"][cut:], arrays["train_labels"][cut:]),
      "test": _as_dataset(arrays["test_images"], arrays["test_labels"]),
  }
