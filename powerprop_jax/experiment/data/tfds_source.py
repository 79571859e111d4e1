"""Whole tfds splits as numpy arrays, through ``tfds.data_source`` (no TensorFlow needed).

Never downloads: a data set that is not prepared in ``data_dir`` fails at once with one
DataError line saying how to prepare it (an implicit download retries for minutes offline and
writes a ``downloads/`` folder into the data directory).
"""

from __future__ import annotations

import os

import numpy as np

from powerprop_jax.experiment.data.base import DataError


def load_arrays(name: str, data_dir: str | None, offline_hint: str) -> dict[str, np.ndarray]:
  """{"train_images", "train_labels", "test_images", "test_labels"} of prepared tfds ``name``.

  Any failure (not prepared, unreadable) becomes one DataError line ending in ``offline_hint``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  arrays = {}
  for split in ("train", "test"):
    try:
      source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
      examples = [source[i] for i in range(len(source))]
    except Exception as e:  # tfds raises many types for a missing or unreadable set
      first = (str(e).strip().splitlines() or [""])[0]
      raise DataError(f"tfds {name} {split} split is not prepared or unreadable in {where!r} "
                      f"({type(e).__name__}: {first}); prepare it where a network exists "
                      f"with `tfds build {name} --data_dir=DIR` and set data.source='tfds', "
                      f"data.dir=DIR, or {offline_hint}") from None
    if not examples:  # left for check_split to report as an empty split
      arrays[f"{split}_images"] = np.zeros((0,), np.uint8)
      arrays[f"{split}_labels"] = np.zeros((0,), np.int64)
      continue
    try:
      arrays[f"{split}_images"] = np.stack([np.asarray(e["image"]) for e in examples])
    except ValueError as e:
      raise DataError(f"tfds {name} {split} split: images of differing shapes ({e}); "
                      f"rebuild it with `tfds build {name}`") from None
    arrays[f"{split}_labels"] = np.asarray([e["label"] for e in examples])
  return arrays
