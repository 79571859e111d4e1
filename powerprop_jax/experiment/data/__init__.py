"""Input pipelines. ``load_datasets(config.data)`` dispatches on ``config.data.name``."""

from __future__ import annotations

from typing import Callable

import ml_collections
import numpy as np

from powerprop_jax import checks as config_checks  # not .checks: the submodule of that name

from powerprop_jax.experiment.data.base import (DataError, Dataset, DataSplits, batch_indices,
                                     epoch_permutation, gather_batch, local_batches,
                                     padded_batches)
from powerprop_jax.experiment.data.checks import check_split
from powerprop_jax.experiment.data.cifar import load_cifar10
from powerprop_jax.experiment.data.mnist import load_mnist, read_idx
from powerprop_jax.experiment.data.synthetic import prototype_digits

# name -> loader(data_config) -> {"train", "validation", "test"} Datasets. Fields are read
# directly: their defaults live in powerprop_jax/experiment/config.py and nowhere else.
LOADERS: dict[str, Callable[[ml_collections.ConfigDict], dict[str, Dataset]]] = {
    "mnist": lambda c: load_mnist(c.source, c.dir, c.num_validation),
    "cifar10": lambda c: load_cifar10(c.source, c.dir, c.file, c.num_validation),
}


STREAMED = ("imagenet2012",)
DATA_SETS = (*LOADERS, *STREAMED)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks a ``data`` section before anything is read (one line naming the field)."""
  config_checks.choice(config.name, "data.name", DATA_SETS)
  config_checks.integer(config.num_validation, "data.num_validation", 1)
  config_checks.integer(config.image_size, "data.image_size", 1)
  config_checks.integer(config.workers, "data.workers", -1)
  config_checks.integer(config.prefetch, "data.prefetch", 1)


def sample_input(config: ml_collections.ConfigDict) -> np.ndarray:
  """A zero batch of one example shaped as the loaders deliver ``config.name`` (what a model
  is initialised on; no data is read)."""
  config_checks.choice(config.name, "data.name", DATA_SETS)
  if config.name == "mnist":
    return np.zeros((1, 784), np.float32)
  size = 32 if config.name == "cifar10" else int(config.image_size)
  return np.zeros((1, size, size, 3), np.float32)


def load_datasets(config: ml_collections.ConfigDict) -> dict[str, Dataset]:
  """The train/validation/test splits of the data set ``config.name`` as in-memory arrays."""
  if config.name not in LOADERS:
    raise DataError(f"unknown data.name {config.name!r}; known: {sorted(LOADERS)}")
  return LOADERS[config.name](config)


def load_splits(config: ml_collections.ConfigDict) -> DataSplits:
  """A run's inputs: in-memory splits, or streams for ImageNet (see ``data.inputs``)."""
  from powerprop_jax.experiment.data import inputs  # pylint: disable=g-import-not-at-top
  return inputs.load_splits(config)


__all__ = ["DATA_SETS", "sample_input", "DataError", "check_config", "Dataset", "DataSplits", "LOADERS", "batch_indices", "check_split",
           "epoch_permutation", "gather_batch", "load_cifar10", "load_datasets", "load_mnist",
           "load_splits", "local_batches", "padded_batches", "prototype_digits", "read_idx"]
