"""PackNet's and EfficientPackNet's choices, as pure functions (the driver that trains a stream
with them is :mod:`powerprop_jax.experiment.continual`).

* PackNet (Mallya & Lazebnik 2018) keeps a fixed top ``1 - prune_fraction`` of each task's
  weights by |w|.
* EfficientPackNet (the paper's Algorithm 1) keeps the sparsest fraction p of an ascending grid
  whose pruned validation accuracy P_s meets ``gamma * P`` (P: the unpruned accuracy):
  :func:`choose_keep_fraction`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def choose_keep_fraction(fractions: np.ndarray, accuracy_at: Callable[[float], float],
                         target: float) -> tuple[float, float]:
  """EfficientPackNet's search: the first (sparsest) fraction of the ascending grid whose
  accuracy meets ``target`` (= gamma * P); the last fraction if none does. Returns
  (fraction, its accuracy)."""
  if len(fractions) == 0:
    raise ValueError("choose_keep_fraction needs at least one keep fraction")
  for fraction in fractions:
    accuracy = accuracy_at(float(fraction))
    if accuracy >= target:
      return float(fraction), accuracy
  return float(fractions[-1]), accuracy


def average_accuracy(acc: np.ndarray) -> float:
  """Mean over the tasks seen of the last trained row of the (N, N) accuracy matrix
  ``acc[i, j]`` (test accuracy on task j after training task i; NaN for j > i or untrained)."""
  trained = [i for i in range(len(acc)) if np.isfinite(acc[i]).any()]
  return float(np.nanmean(acc[trained[-1]])) if trained else float("nan")
