"""Checks every loader runs on every split as it loads, so bad data stops with one DataError line.

Images must be uint8 pixels 0..255 (the loaders scale them), labels integer class ids in
``[0, num_classes)``, one label per image, no split empty, every split the same image size.
"""

from __future__ import annotations

import numpy as np

from powerprop_jax.experiment.data.base import DataError


def check_split(name: str, images: np.ndarray, labels: np.ndarray, num_classes: int,
                source: str, image_shape: tuple[int, ...] | None = None) -> None:
  """Raises DataError unless split ``name`` of ``source`` holds trustworthy images and labels.

  ``image_shape``: the per-example shape (e.g. the train split's (H, W, C)) it must match.
  """
  where = f"{source}, {name} split"
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim == 0 or len(images) == 0:
    raise DataError(f"{where}: the split is empty (0 images); every split needs at least "
                    f"one image")
  if images.ndim < 2:
    raise DataError(f"{where}: images have shape {images.shape}; expected (N, H, W[, C])")
  if images.dtype != np.uint8:
    raise DataError(f"{where}: images are {images.dtype}, but the loader expects uint8 pixels "
                    f"0..255 and scales them itself; store the images as uint8 "
                    f"(floats in [0, 1]: np.round(x * 255).astype(np.uint8))")
  if labels.ndim != 1:
    raise DataError(f"{where}: labels have shape {labels.shape}; expected one class id per "
                    f"image, shape ({len(images)},)")
  if len(labels) != len(images):
    raise DataError(f"{where}: {len(images)} images but {len(labels)} labels; "
                    f"the counts must match")
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{where}: labels are {labels.dtype}; expected integer class ids in "
                    f"[0, {num_classes})")
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    i = int(bad[0])
    raise DataError(f"{where}: label {int(labels[i])} at index {i} is outside "
                    f"[0, {num_classes}) ({bad.size} of {len(labels)} labels out of range); labels "
                    f"must be class ids 0..{num_classes - 1}")
  if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
    raise DataError(f"{where}: images are {_fmt(images.shape[1:])} but train images are "
                    f"{_fmt(image_shape)}; every split must have the same image size")


def check_num_validation(num_validation: int, num_train: int, source: str) -> None:
  """Raises DataError unless ``num_validation`` leaves at least one training example."""
  if (isinstance(num_validation, bool) or not isinstance(num_validation, (int, np.integer))
      or not 0 <= num_validation < num_train):
    raise DataError(f"data.num_validation={num_validation!r} is out of range for {source}: "
                    f"it must be an int in [0, {num_train}) ({num_train} training images)")


def _fmt(shape: tuple[int, ...]) -> str:
  return "x".join(str(d) for d in shape)
