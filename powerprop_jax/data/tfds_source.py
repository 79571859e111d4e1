"""Whole tfds splits as numpy arrays, through ``tfds.data_source`` (no TensorFlow needed)."""

from __future__ import annotations

import numpy as np

from powerprop_jax.data.mnist import DataError


def load_arrays(name: str, data_dir: str | None, offline_hint: str) -> dict[str, np.ndarray]:
  """{"train_images", "train_labels", "test_images", "test_labels"} of tfds dataset ``name``.

  Downloads where a network exists; any failure becomes one DataError line ending in
  ``offline_hint``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  arrays = {}
  for split in ("train", "test"):
    try:
      source = tfds.data_source(name, split=split, data_dir=data_dir or None)
      examples = [source[i] for i in range(len(source))]
    except Exception as e:  # tfds raises many types for a missing/undownloadable set
      raise DataError(f"cannot load tfds {name} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0]}); {offline_hint}") from None
    arrays[f"{split}_images"] = np.stack([np.asarray(e["image"]) for e in examples])
    arrays[f"{split}_labels"] = np.asarray([e["label"] for e in examples])
  return arrays
