"""Haiku models, all as ``f(x, is_training) -> logits`` under ``hk.transform_with_state``.

Models are plain: Powerpropagation is applied outside them (``pp.effective_params``) by the
training loop, or inside them with ``pp.haiku.powerprop``; both give the same numbers.
"""

from __future__ import annotations

from typing import Any, Callable

import haiku as hk
import jax
import jax.numpy as jnp


def lenet_300_100(x: jax.Array, is_training: bool, num_classes: int = 10) -> jax.Array:
  """LeNet-300-100: x (B, ...) flattened -> 300 -> 100 -> num_classes, ReLU."""
  del is_training
  return hk.nets.MLP([300, 100, num_classes], name="mlp")(hk.Flatten()(x))


def cifar_convnet(x: jax.Array, is_training: bool, num_classes: int = 10,
                  width: float = 1.0) -> jax.Array:
  """The CIFAR-10 net (PAPER.md section 3 decision): x (B, 32, 32, 3) -> logits (B, C).

  Three blocks of two 3x3 convs (64-64, 128-128, 256-256), each conv followed by batch norm
  and ReLU, 2x2 max-pool after each block; then dense 256 -> 256 -> num_classes (ReLU).
  ``width`` multiplies every conv's channel count (1.0 is the paper-sized net; the CPU tests
  use 0.25). Batch-norm statistics live in the Haiku state (the loop's ``net_state``).
  """
  h = x
  for i, channels in enumerate((64, 64, 128, 128, 256, 256)):
    h = hk.Conv2D(max(1, round(width * channels)), 3, with_bias=False, name=f"conv_{i}")(h)
    h = hk.BatchNorm(True, True, decay_rate=0.9, name=f"bn_{i}")(h, is_training)
    h = jax.nn.relu(h)
    if i % 2 == 1:
      h = hk.max_pool(h, (2, 2, 1), (2, 2, 1), "VALID")
  h = hk.Flatten()(h)
  return hk.nets.MLP([256, 256, num_classes], name="mlp")(h)


# hk.nets.ResNet zero-initialises its logits layer, a fixed point under Powerpropagation
# (alpha > 1) that would never train: use a fan-in truncated normal (the LeNet init) instead.
_LOGITS = {"w_init": hk.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")}


def resnet50(x: jax.Array, is_training: bool, num_classes: int = 1000) -> jax.Array:
  """``hk.nets.ResNet50``: x (B, H, W, 3) -> logits (B, num_classes)."""
  return hk.nets.ResNet50(num_classes, logits_config=_LOGITS)(x, is_training)


def resnet_tiny(x: jax.Array, is_training: bool, num_classes: int = 10) -> jax.Array:
  """A 10-layer ``hk.nets.ResNet`` (one basic block per group, 8-16-32-64 channels), the
  same module code as ResNet-50 at a size the CPU tests can run sharded."""
  return hk.nets.ResNet((1, 1, 1, 1), num_classes, bottleneck=False,
                        channels_per_group=(8, 16, 32, 64),
                        use_projection=(True, True, True, True),
                        logits_config=_LOGITS)(x, is_training)


MODELS: dict[str, Callable[..., jax.Array]] = {
    "lenet_300_100": lenet_300_100,
    "cifar_convnet": cifar_convnet,
    "resnet50": resnet50,
    "resnet_tiny": resnet_tiny,
}


def _bind(name: str, num_classes: int = 10, **kwargs: Any) -> Callable[..., jax.Array]:
  """``f(x, is_training)`` of the named model with its keyword arguments fixed."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
  fn = MODELS[name]
  return lambda x, is_training: fn(jnp.asarray(x), is_training, num_classes=num_classes,
                                   **kwargs)


def get_model(name: str, num_classes: int = 10, **kwargs: Any) -> hk.TransformedWithState:
  """The named model as ``hk.transform_with_state`` of ``f(x, is_training)``.

  ``kwargs`` (e.g. ``width`` for ``cifar_convnet``) go to the model function.
  """
  return hk.transform_with_state(_bind(name, num_classes, **kwargs))


def model_from_config(model_config: Any) -> hk.TransformedWithState:
  """``get_model`` from a config's ``model`` fields: name, num_classes and the model's own."""
  return get_model(**dict(model_config))


def creation_order(model_config: Any, sample_input: Any) -> list[str]:
  """Names of the modules that create parameters, in the order the model creates them.

  Haiku (and every pytree flatten) sorts params by name, so "the first layer" of a ResNet
  would be ``block_group_0``; this traces the model once (no FLOPs) and records instead.
  """
  fn = _bind(**dict(model_config))
  order: list[str] = []

  def record(next_creator, shape, dtype, init, context):
    if context.module_name not in order:
      order.append(context.module_name)
    return next_creator(shape, dtype, init)

  def traced(x):
    with hk.custom_creator(record):
      return fn(x, True)

  jax.eval_shape(hk.transform_with_state(traced).init, jax.random.PRNGKey(0), sample_input)
  return order
