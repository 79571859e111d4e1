"""Input pipelines. ``load_datasets(config.data)`` dispatches on ``config.data.name``."""

from __future__ import annotations

from typing import Callable

import ml_collections

from powerprop_jax.data.mnist import DataError, Dataset, load_mnist, read_idx

# name -> loader(data_config) -> {"train", "validation", "test"} Datasets
LOADERS: dict[str, Callable[[ml_collections.ConfigDict], dict[str, Dataset]]] = {
    "mnist": lambda c: load_mnist(c.get("source", "auto"), c.get("dir", ""),
                                  c.get("num_validation", 5000)),
}


def load_datasets(config: ml_collections.ConfigDict) -> dict[str, Dataset]:
  """The train/validation/test splits of the data set ``config.name`` as in-memory arrays."""
  if config.name not in LOADERS:
    raise DataError(f"unknown data.name {config.name!r}; known: {sorted(LOADERS)}")
  return LOADERS[config.name](config)


__all__ = ["DataError", "Dataset", "LOADERS", "load_datasets", "load_mnist", "read_idx"]
