"""CIFAR-10: 32x32x3 images, normalised per channel, NHWC float32; labels (N,) int32.

Two sources (``"auto"``: npz when ``data_dir`` is set, else tfds):
* ``"npz"``: a numpy archive with ``train_images`` (N, 32, 32, 3) uint8, ``train_labels``,
  ``test_images``, ``test_labels`` (e.g. ``../shared/data/cifar10_jpeg_subset.npz``);
* ``"tfds"``: ``tfds.data_source("cifar10")``, prepared beforehand (never downloads; works
  under ``tfds.testing.mock_data``).
Every split is checked as it loads (``checks.check_split``): uint8 images only, labels in
[0, 10), matching counts and image sizes.
A seeded random ``num_validation`` of the training images (the same every run) form the
validation split: a plain tail cut would hold out one class of a class-sorted file. Each
channel c is mapped to ``(x / 255 - MEAN[c]) / STD[c]`` with the canonical CIFAR-10 statistics.
"""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from powerprop_jax.experiment.data.base import DataError, Dataset
from powerprop_jax.experiment.data.checks import check_num_validation, check_split

MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
NUM_CLASSES = 10
VALIDATION_SEED = 0


def normalise(images: np.ndarray) -> np.ndarray:
  """uint8 (N, 32, 32, 3) -> float32 (N, 32, 32, 3), per-channel zero mean, unit std."""
  return ((images.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)


def _load_npz(path: str) -> dict[str, np.ndarray]:
  """The four arrays of npz archive ``path``; missing, truncated or corrupt -> DataError."""
  if not os.path.isfile(path):
    raise DataError(f"CIFAR-10 npz file {path!r} does not exist")
  try:
    with np.load(path, allow_pickle=False) as f:
      if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"CIFAR-10 file {path!r} is one .npy array, not an npz archive; "
                        f"save it with np.savez(path, {'=..., '.join(_KEYS)}=...)")
      arrays = {k: f[k] for k in _KEYS if k in f.files}
  except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError) as e:
    if isinstance(e, DataError):  # DataError is a ValueError: pass ours through
      raise
    first = (str(e).strip().splitlines() or [""])[0]
    raise DataError(f"CIFAR-10 npz file {path!r} is truncated or corrupt "
                    f"({type(e).__name__}: {first}); re-create or re-copy it") from None
  missing = [k for k in _KEYS if k not in arrays]
  if missing:
    raise DataError(f"{path} lacks arrays {missing}; needs {list(_KEYS)}")
  return arrays


def load_cifar10(source: str = "npz", data_dir: str = "", file: str = "cifar10_jpeg_subset.npz",
                 num_validation: int = 1000) -> dict[str, Dataset]:
  """{"train", "validation", "test"} Datasets of CIFAR-10 (images normalised, NHWC)."""
  if source == "auto":
    source = "npz" if data_dir else "tfds"
  if source == "npz":
    where = os.path.join(data_dir, file) if data_dir else file
    arrays = _load_npz(where)
  elif source == "tfds":
    from powerprop_jax.experiment.data import tfds_source  # pylint: disable=g-import-not-at-top
    arrays = tfds_source.load_arrays("cifar10", data_dir,
                                     "offline, use data.source='npz' and data.dir=DIR holding "
                                     f"{file}")
    where = "tfds cifar10"
  else:
    raise DataError(f"data.source must be 'auto', 'npz' or 'tfds', got {source!r}")
  images, labels = arrays["train_images"], arrays["train_labels"]
  check_split("train", images, labels, NUM_CLASSES, where)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise DataError(f"{where}, train split: images must be (N, H, W, 3), got {images.shape}")
  check_split("test", arrays["test_images"], arrays["test_labels"], NUM_CLASSES, where,
              image_shape=images.shape[1:])
  n = len(images)
  check_num_validation(num_validation, n, where)
  order = np.random.default_rng(VALIDATION_SEED).permutation(n)
  train, held_out = np.sort(order[num_validation:]), np.sort(order[:num_validation])
  as_ds = lambda x, y: Dataset(normalise(x), np.asarray(y, np.int32))  # noqa: E731
  return {
      "train": as_ds(images[train], labels[train]),
      "validation": as_ds(images[held_out], labels[held_out]),
      "test": as_ds(arrays["test_images"], arrays["test_labels"]),
  }
