"""optax form of Powerpropagation: train an unmodified model that stores ordinary weights w.

``powerprop_optimizer(inner, alpha)`` reproduces, step for step, the dynamics of training
``v`` with ``inner`` where ``w = powerprop(v)``:

    v   = inverse_powerprop(w)
    g_v = g_w * alpha * |v|**(alpha - 1)          (chain rule through w = sign(v)|v|^alpha)
    u_v, inner_state = inner.update(g_v, inner_state, v)
    w'  = powerprop(v + u_v)                      update returned: w' - w

The inner optimizer sees ``v`` as its params (so weight decay acts on v, an L_{2/alpha}
penalty on w). Nothing but the inner state is stored: v is derived from the params each step,
so masks or other wrappers that edit w stay consistent with it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

from powerprop_jax import checks, transform
from powerprop_jax.transform import ParamPredicate, weights_only


def powerprop_optimizer(inner: optax.GradientTransformation, alpha: float,
                        predicate: ParamPredicate = weights_only
                        ) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so that training plain weights w follows Powerpropagation dynamics.

  Args:
    inner: any optax transformation; it is run in v-space.
    alpha: the power, a finite number >= 1 (alpha == 1 gives ``inner`` unchanged).
    predicate: ``predicate(module_name, name, shape)`` selecting reparameterised leaves.
  """
  alpha = transform.validate_alpha(alpha)
  inner = optax.with_extra_args_support(inner)

  def to_v(params):
    return transform.map_selected(lambda w: transform.inverse_powerprop(w, alpha), params,
                                  predicate)

  def init_fn(params):
    return inner.init(to_v(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("powerprop_optimizer needs the current params: call update(g, s, params)")
    v = to_v(params)
    is_sel = transform.selected(params, predicate)
    g_v = jax.tree_util.tree_map(
        lambda sel, g, vv: g * transform.powerprop_derivative(vv, alpha) if sel else g,
        is_sel, updates, v)
    u_v, state = inner.update(g_v, state, v, **extra_args)
    new_w = jax.tree_util.tree_map(
        lambda sel, vv, u, w: transform.powerprop(vv + u, alpha) - w if sel else u,
        is_sel, v, u_v, params)
    return new_w, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)



def learning_rate_schedule(config: Any, total_steps: int) -> optax.Schedule:
  """lr(step) of a config's ``optimizer`` section.

  Fields (defaults in ``powerprop_jax.experiment.config.base``): learning_rate, schedule (constant |
  cosine | piecewise), warmup_steps (linear warm-up from 0), boundaries (fractions of
  ``total_steps`` where the piecewise schedule multiplies the lr by decay_factor).
  """
  lr = float(config.learning_rate)
  if not lr > 0:
    raise ValueError(f"optimizer.learning_rate must be > 0, got {config.learning_rate}")
  warmup = int(config.warmup_steps)
  if not 0 <= warmup < max(total_steps, 1):
    raise ValueError(f"optimizer.warmup_steps must be in [0, train.steps={total_steps}), "
                     f"got {warmup}")
  if config.schedule == "constant":
    schedule = optax.constant_schedule(lr)
  elif config.schedule == "cosine":
    schedule = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
  elif config.schedule == "piecewise":
    bad = [b for b in config.boundaries if not 0.0 < float(b) < 1.0]
    if bad:
      raise ValueError(f"optimizer.boundaries are fractions of training in (0, 1), got {bad}")
    # join_schedules below restarts this schedule's count after the warm-up: shift the
    # boundaries so that they stay absolute fractions of training.
    schedule = optax.piecewise_constant_schedule(
        lr, {max(int(b * total_steps) - warmup, 0): float(config.decay_factor)
             for b in config.boundaries})
  else:
    raise ValueError(f"optimizer.schedule must be constant|cosine|piecewise, got "
                     f"{config.schedule!r}")
  if warmup:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
  return schedule


OPTIMIZERS = ("sgd", "adam")


def check_config(config: Any, total_steps: int) -> None:
  """Checks an ``optimizer`` section (one line naming the field) by building its optimizer."""
  checks.choice(config.name, "optimizer.name", OPTIMIZERS)
  checks.fraction(config.momentum, "optimizer.momentum", 0.0, 1.0)
  checks.positive(config.weight_decay, "optimizer.weight_decay", allow_zero=True)
  checks.choice(config.weight_decay_kernels_only, "optimizer.weight_decay_kernels_only",
                (False, True))
  checks.positive(config.decay_factor, "optimizer.decay_factor")
  checks.integer(config.warmup_steps, "optimizer.warmup_steps")
  try:
    make_optimizer(config, total_steps)
  except ValueError as e:
    raise checks.ConfigError(str(e)) from None


def kernels_only(mask: Any = None) -> Callable[[Any], Any]:
  """``params -> tree of bools``: True on kernels (``transform.weights_only``: "w"/"kernel"
  leaves of ndim >= 2), False on biases and batch-norm scales/offsets; ANDed with ``mask``
  (a params-shaped tree of bools) if given."""

  def kernel_mask(params: Any) -> Any:
    kernels = transform.selected(params, weights_only)
    if mask is None:
      return kernels
    return jax.tree_util.tree_map(lambda k, m: bool(k and m), kernels, mask)

  return kernel_mask


def make_optimizer(config: Any, total_steps: int, weight_decay_mask: Any = None
                   ) -> optax.GradientTransformation:
  """The optax optimizer a config's ``optimizer`` section names: name (sgd | adam),
  momentum, nesterov, weight_decay (on the leaves ``weight_decay_mask`` marks True; None:
  all; with ``weight_decay_kernels_only`` only on those that are also kernels,
  :func:`kernels_only`), and the :func:`learning_rate_schedule`."""
  schedule = learning_rate_schedule(config, total_steps)
  if config.name == "sgd":
    tx = optax.sgd(schedule, momentum=float(config.momentum) or None,
                   nesterov=bool(config.nesterov))
  elif config.name == "adam":
    tx = optax.adam(schedule)
  else:
    raise ValueError(f"optimizer.name must be sgd|adam, got {config.name!r}")
  if bool(config.weight_decay_kernels_only):
    weight_decay_mask = kernels_only(weight_decay_mask)
  if float(config.weight_decay):
    tx = optax.chain(optax.add_decayed_weights(float(config.weight_decay),
                                               mask=weight_decay_mask), tx)
  return tx
