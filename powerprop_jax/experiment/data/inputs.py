"""A run's inputs from its config: in-memory splits for small data, streams for ImageNet."""

from __future__ import annotations

from typing import Callable

import ml_collections
import numpy as np

from powerprop_jax import checks
from powerprop_jax.experiment.data.base import Dataset, DataSplits

STREAMED = ("imagenet2012",)



def load_validated(config: ml_collections.ConfigDict,
                   *more_checks: Callable[[ml_collections.ConfigDict], None]) -> DataSplits:
  """Checks what a training run reads (``train.check_config``) and ``more_checks`` (a
  script's own sections), the batch against the device count, loads the data, then checks
  the batch against the data set: every bad value is refused before a step is taken."""
  from powerprop_jax.experiment import parallel, train  # pylint: disable=g-import-not-at-top
  train.check_config(config)
  for check in more_checks:
    check(config)
  num_devices = parallel.make_mesh(int(config.train.num_devices)).size
  train.check_batch_split(int(config.train.batch_size), num_devices,
                          int(config.train.microbatches))
  splits = load_splits(config)
  train.check_config(config, num_train=splits.num_train, num_devices=num_devices)
  check_classes(splits, int(config.model.num_classes), config.data.name)
  return splits


def check_classes(splits: DataSplits, num_classes: int, name: str) -> None:
  """ConfigError unless every in-memory split's labels are classes of the model's head."""
  top = max((int(np.max(d.labels)) for d in splits.as_dict().values()
             if isinstance(d, Dataset) and len(d.labels)), default=-1)
  if top >= num_classes:
    raise checks.ConfigError(f"{name} has labels up to {top} ({top + 1} classes) but "
                             f"model.num_classes={num_classes}; set model.num_classes="
                             f"{top + 1}")


def load_splits(config: ml_collections.ConfigDict) -> DataSplits:
  """Train/validation/test inputs of ``config.data.name``.

  In-memory data sets load whole (``data.load_datasets``). ImageNet streams: training
  batches from ``imagenet.train_batches`` (this process's shard, from any step), and the
  ``validation`` split, the one the published top-1 is measured on, as ``validation`` (no
  separate test split: the final record's ``validation_accuracy`` is the top-1), in global
  batches of the size the trainer asks for (``train.eval_batch_size`` padded to the mesh).
  """
  if config.data.name not in STREAMED:
    from powerprop_jax.experiment import data  # pylint: disable=g-import-not-at-top
    return DataSplits.from_datasets(data.load_datasets(config.data))
  from powerprop_jax.experiment.data import imagenet  # pylint: disable=g-import-not-at-top
  imagenet.check_prepared(config.data.dir)
  batch, seed = int(config.train.batch_size), int(config.seed)
  size = int(config.data.image_size)

  def stream(start_step: int):
    return imagenet.train_batches(config.data, batch, seed, start_step)

  def evaluation(global_batch: int):
    return imagenet.eval_batches(config.data, "validation", global_batch)

  return DataSplits(None, evaluation, None, stream_train=stream,
                    sample_input=np.zeros((1, size, size, 3), np.float32),
                    num_train=imagenet.num_examples(config.data.dir, "train"))
