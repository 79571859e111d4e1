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

import jax
import optax

from powerprop_jax import transform
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
