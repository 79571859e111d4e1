"""Haiku glue: reparameterise any Haiku model in place, without editing it.

    with pp.haiku.powerprop(alpha=4.0):
      logits = hk.nets.MLP([300, 100, 10])(x)

Inside the scope, every selected parameter (by default weight matrices and conv kernels) is
*created* as ``v = inverse_powerprop(u)`` with ``u`` drawn from the module's own initialiser,
and *read* as ``w = powerprop(v)``: the stored parameter is ``v``, the module computes with
``w``, and at init ``w == u`` exactly. The core math lives in :mod:`powerprop_jax.transform`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import haiku as hk

from powerprop_jax import transform
from powerprop_jax.transform import ParamPredicate, weights_only


def _is_selected(predicate: ParamPredicate, context: hk.GetterContext) -> bool:
  return bool(predicate(context.module_name, context.name, tuple(context.original_shape)))


@contextlib.contextmanager
def powerprop(alpha: float, predicate: ParamPredicate = weights_only) -> Iterator[None]:
  """Context manager that reparameterises the selected parameters created and read in it.

  Args:
    alpha: the power, a finite number >= 1; alpha == 1 leaves the model unchanged.
    predicate: ``predicate(module_name, name, shape) -> bool`` choosing the parameters.
  """
  alpha = transform.validate_alpha(alpha)

  def creator(next_creator, shape, dtype, init, context):
    if not _is_selected(predicate, context):
      return next_creator(shape, dtype, init)
    return next_creator(
        shape, dtype, lambda s, d: transform.inverse_powerprop(init(s, d), alpha))

  def getter(next_getter, value, context):
    if _is_selected(predicate, context):
      value = transform.powerprop(value, alpha)
    return next_getter(value)

  with hk.custom_creator(creator), hk.custom_getter(getter):
    yield
