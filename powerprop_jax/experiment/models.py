"""Haiku models, all as ``f(x, is_training) -> logits`` under ``hk.transform_with_state``.

Models are plain: Powerpropagation is applied outside them (``pp.effective_params``) by the
training loop, or inside them with ``pp.haiku.powerprop``; both give the same numbers.

Initialisation: every ``hk.Linear`` of the paper's models draws from
``VarianceScaling(1.0, "fan_in", "truncated_normal")``, the official notebook's initialiser:
a truncated normal whose *actual* standard deviation is 1/sqrt(fan_in). (Haiku's default
``TruncatedNormal(1/sqrt(fan_in))`` has spread 0.88/sqrt(fan_in), being cut at 2 stddev.)

Precision: ``compute_dtype="bfloat16"`` runs the network in bfloat16 with Haiku's mixed
precision (policies pushed as contexts while the model function runs, no global state):
params stay float32 (the loop applies Powerpropagation to them in float32, before the model
casts them), ``hk.Linear``/``hk.Conv2D`` (inside ``hk.nets.MLP``/``hk.nets.ResNet`` too)
compute in bfloat16, ``hk.BatchNorm`` computes and keeps its statistics in float32, and the
logits come out float32.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, Iterator

import haiku as hk
import jax
import jax.numpy as jnp
import jmp

from powerprop_jax import checks

COMPUTE_DTYPES = ("float32", "bfloat16")

# The official notebook's initialiser: truncated normal with spread exactly 1/sqrt(fan_in).
FAN_IN_INIT = hk.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")


def lenet_300_100(x: jax.Array, is_training: bool, num_classes: int = 10) -> jax.Array:
  """LeNet-300-100: x (B, ...) flattened -> 300 -> 100 -> num_classes, ReLU."""
  del is_training
  return hk.nets.MLP([300, 100, num_classes], w_init=FAN_IN_INIT, name="mlp")(hk.Flatten()(x))


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
  return hk.nets.MLP([256, 256, num_classes], w_init=FAN_IN_INIT, name="mlp")(h)


# hk.nets.ResNet zero-initialises its logits layer, a fixed point under Powerpropagation
# (alpha > 1) that would never train: use a fan-in truncated normal (the LeNet init) instead.
_LOGITS = {"w_init": FAN_IN_INIT}


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


COMPUTE_DTYPES = ("float32", "bfloat16")


def check_config(config: Any) -> None:
  """Checks a ``model`` section (one line naming the field)."""
  checks.choice(config.name, "model.name", sorted(MODELS))
  checks.choice(config.compute_dtype, "model.compute_dtype", COMPUTE_DTYPES)
  checks.integer(config.num_classes, "model.num_classes", 2)
  checks.positive(config.width, "model.width")


def _policies(compute_dtype: str) -> list[tuple[type[hk.Module], jmp.Policy]]:
  """(module class, jmp policy) pairs for ``compute_dtype`` (none for float32)."""
  if compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"model.compute_dtype must be one of {COMPUTE_DTYPES}, got "
                     f"{compute_dtype!r}")
  if compute_dtype == "float32":
    return []
  half = jnp.dtype(compute_dtype)
  layer = jmp.Policy(param_dtype=jnp.float32, compute_dtype=half, output_dtype=half)
  norm = jmp.Policy(param_dtype=jnp.float32, compute_dtype=jnp.float32, output_dtype=half)
  return [(hk.Linear, layer), (hk.Conv2D, layer), (hk.BatchNorm, norm)]


@contextlib.contextmanager
def precision(compute_dtype: str = "float32") -> Iterator[None]:
  """Haiku mixed-precision policies for ``compute_dtype`` while the context is active.

  Use inside a transformed function; params are created and stored float32 either way.
  """
  with contextlib.ExitStack() as stack:
    for cls, policy in _policies(compute_dtype):
      stack.enter_context(hk.mixed_precision.push_policy(cls, policy))
    yield


def _bind(name: str, num_classes: int = 10, compute_dtype: str = "float32",
          width: float = 1.0, **kwargs: Any) -> Callable[..., jax.Array]:
  """``f(x, is_training) -> float32 logits`` of the named model, its arguments fixed.

  ``width`` goes to models that take it; a model without one refuses width != 1.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
  fn = MODELS[name]
  _policies(compute_dtype)  # validates compute_dtype now, not at the first trace
  if "width" in inspect.signature(fn).parameters:
    kwargs["width"] = width
  elif width != 1.0:
    raise ValueError(f"model {name!r} has no width parameter; got model.width={width}")

  def f(x, is_training):
    with precision(compute_dtype):
      logits = fn(jnp.asarray(x), is_training, num_classes=num_classes, **kwargs)
    return logits.astype(jnp.float32)

  return f


def get_model(name: str, num_classes: int = 10, compute_dtype: str = "float32",
              **kwargs: Any) -> hk.TransformedWithState:
  """The named model as ``hk.transform_with_state`` of ``f(x, is_training)``.

  ``compute_dtype``: "float32" or "bfloat16" (mixed precision, see the module doc).
  ``kwargs`` (e.g. ``width`` for ``cifar_convnet``) go to the model function; ``width`` is
  accepted by every model but only ``cifar_convnet`` may have one other than 1.
  """
  return hk.transform_with_state(_bind(name, num_classes, compute_dtype, **kwargs))


def model_from_config(model_config: Any) -> hk.TransformedWithState:
  """``get_model`` from a config's ``model`` fields: name, num_classes, width, compute_dtype
  (and any model-specific extra)."""
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


def param_shapes(model_config: Any, input_shape: tuple[int, ...]) -> tuple[Any, tuple[str, ...]]:
  """(params as ``jax.ShapeDtypeStruct`` leaves, module names in creation order) of the model
  a ``model`` section builds for inputs of ``input_shape``; traced, never run, and cached per
  model and shape (every row of an experiment file usually shares one)."""
  return _param_shapes(tuple(sorted(dict(model_config).items())), tuple(input_shape))


@functools.lru_cache(maxsize=8)
def _param_shapes(model_items: tuple, input_shape: tuple[int, ...]):
  model_config = dict(model_items)
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  model = model_from_config(model_config)
  params, _ = jax.eval_shape(lambda k, x: model.init(k, x, is_training=True),
                             jax.random.PRNGKey(0), x)
  return params, tuple(creation_order(model_config, x))
