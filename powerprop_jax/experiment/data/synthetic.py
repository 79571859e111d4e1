"""A tiny learnable stand-in for MNIST, for smoke runs and tests that need no files."""

from __future__ import annotations

import numpy as np

from powerprop_jax.experiment.data.base import Dataset


def prototype_digits(n_train: int = 600, n_eval: int = 200, seed: int = 0, dim: int = 784,
                     noise: float = 0.5) -> dict[str, Dataset]:
  """Ten classes, each a fixed Gaussian prototype in R^dim plus N(0, noise^2) noise.

  Returns ``{"train", "validation", "test"}`` with ``n_train``, ``n_eval`` and ``n_eval``
  examples: images [n, dim] float32, labels [n] int32. A linear model separates the classes
  at noise 0.5, so a few hundred steps of LeNet reach > 90%.
  """
  rng = np.random.default_rng(seed)
  protos = rng.normal(size=(10, dim)).astype(np.float32)

  def make(n: int) -> Dataset:
    y = rng.integers(0, 10, n).astype(np.int32)
    return Dataset(protos[y] + noise * rng.normal(size=(n, dim)).astype(np.float32), y)

  return {"train": make(n_train), "validation": make(n_eval), "test": make(n_eval)}
