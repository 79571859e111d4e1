"""A run's inputs from its config: in-memory splits for small data, streams for ImageNet."""

from __future__ import annotations

import ml_collections
import numpy as np

from powerprop_jax.data.base import DataSplits

STREAMED = ("imagenet2012",)


def load_validated(config: ml_collections.ConfigDict) -> DataSplits:
  """Validates the whole config, loads the data, then checks the batch against the data set:
  every bad value is refused before a step is taken."""
  from powerprop_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config_lib.validate(config)
  splits = load_splits(config)
  config_lib.validate(config, num_train=splits.num_train)
  return splits


def load_splits(config: ml_collections.ConfigDict) -> DataSplits:
  """Train/validation/test inputs of ``config.data.name``.

  In-memory data sets load whole (``data.load_datasets``). ImageNet streams: training
  batches from ``imagenet.train_batches`` (this process's shard, from any step), and the
  ``validation`` split, the one the published top-1 is measured on, as ``validation`` (no
  separate test split: the final record's ``validation_accuracy`` is the top-1).
  """
  if config.data.name not in STREAMED:
    from powerprop_jax import data  # pylint: disable=g-import-not-at-top
    return DataSplits.from_datasets(data.load_datasets(config.data))
  from powerprop_jax.data import imagenet  # pylint: disable=g-import-not-at-top
  imagenet.check_prepared(config.data.dir)
  batch, eval_batch, seed = (int(config.train.batch_size), int(config.train.eval_batch_size),
                             int(config.seed))
  size = int(config.data.image_size)

  def stream(start_step: int):
    return imagenet.train_batches(config.data, batch, seed, start_step)

  def evaluation():
    return imagenet.eval_batches(config.data, "validation", eval_batch)

  return DataSplits(None, evaluation, None, stream_train=stream,
                    sample_input=np.zeros((1, size, size, 3), np.float32),
                    num_train=imagenet.num_examples(config.data.dir, "train"))
