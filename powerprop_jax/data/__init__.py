"""Input pipelines. ``load_datasets(config.data)`` dispatches on ``config.data.name``."""

from __future__ import annotations

from typing import Callable

import ml_collections

from powerprop_jax.data.cifar import load_cifar10
from powerprop_jax.data.mnist import DataError, Dataset, load_mnist, read_idx

# name -> loader(data_config) -> {"train", "validation", "test"} Datasets
LOADERS: dict[str, Callable[[ml_collections.ConfigDict], dict[str, Dataset]]] = {
    "mnist": lambda c: load_mnist(c.get("source", "auto"), c.get("dir", ""),
                                  c.get("num_validation", 5000)),
    "cifar10": lambda c: load_cifar10(c.get("source", "npz"), c.get("dir", ""),
                                      c.get("file", "cifar10_jpeg_subset.npz"),
                                      c.get("num_validation", 1000)),
}


def load_datasets(config: ml_collections.ConfigDict) -> dict[str, Dataset]:
  """The train/validation/test splits of the data set ``config.name`` as in-memory arrays."""
  if config.name not in LOADERS:
    raise DataError(f"unknown data.name {config.name!r}; known: {sorted(LOADERS)}")
  return LOADERS[config.name](config)


__all__ = ["DataError", "Dataset", "LOADERS", "load_cifar10", "load_datasets", "load_mnist",
           "read_idx"]
