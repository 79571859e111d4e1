"""Haiku models, all as ``f(x, is_training) -> logits`` under ``hk.transform_with_state``.

Models are plain: Powerpropagation is applied outside them (``pp.effective_params``) by the
training loop, or inside them with ``pp.haiku.powerprop``; both give the same numbers.
"""

from __future__ import annotations

from typing import Callable

import haiku as hk
import jax
import jax.numpy as jnp


def lenet_300_100(x: jax.Array, is_training: bool, num_classes: int = 10) -> jax.Array:
  """LeNet-300-100: x (B, ...) flattened -> 300 -> 100 -> num_classes, ReLU."""
  del is_training
  return hk.nets.MLP([300, 100, num_classes], name="mlp")(hk.Flatten()(x))


MODELS: dict[str, Callable[..., jax.Array]] = {"lenet_300_100": lenet_300_100}


def get_model(name: str, num_classes: int = 10) -> hk.TransformedWithState:
  """The named model as ``hk.transform_with_state`` of ``f(x, is_training)``."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
  fn = MODELS[name]
  return hk.transform_with_state(
      lambda x, is_training: fn(jnp.asarray(x), is_training, num_classes=num_classes))
