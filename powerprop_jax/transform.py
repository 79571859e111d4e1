"""The Powerpropagation reparameterisation as pure functions over arrays and pytrees.

A reparameterised weight is stored as ``v`` and used as

    w = powerprop(v, alpha) = v * |v|**(alpha - 1) = sign(v) * |v|**alpha,

with the exact inverse ``v = sign(w) * |w|**(1/alpha)``. The derivative is
``dw/dv = alpha * |v|**(alpha - 1)``, defined by a custom JVP so that it is finite at
``v = 0`` for every ``alpha >= 1`` (the naive formula gives NaN there for alpha < 2).
Everything is computed in float32 and cast back to the input dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
# predicate(module_name, name, shape) -> whether that parameter is reparameterised.
ParamPredicate = Callable[[str, str, tuple[int, ...]], bool]


def validate_alpha(alpha: float) -> float:
  """Returns ``alpha`` as a float, or raises ValueError unless it is finite and >= 1."""
  try:
    value = float(alpha)
  except (TypeError, ValueError):
    raise ValueError(f"alpha must be a real number >= 1, got {alpha!r}") from None
  if not math.isfinite(value) or value < 1.0:
    raise ValueError(f"alpha must be a finite number >= 1, got {alpha!r}")
  return value


def weights_only(module_name: str, name: str, shape: tuple[int, ...]) -> bool:
  """Default predicate: weight matrices and conv kernels (``w``/``kernel``, ndim >= 2).

  Biases and normalisation scales/offsets are never selected.
  """
  del module_name
  return name in ("w", "kernel") and len(shape) >= 2


class Reparam(NamedTuple):
  """Which params are reparameterised (``predicate``), and with what power (``alpha``)."""
  alpha: float = 1.0
  predicate: ParamPredicate = weights_only


def _require_float(x: Any, what: str) -> jax.Array:
  """``x`` as an array, or ValueError for integer/bool input (the power would truncate)."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{what} needs floating-point weights, got dtype {x.dtype}; "
                     "cast with .astype(jnp.float32)")
  return x


def _abs_pow(x: jax.Array, exponent: float) -> jax.Array:
  """|x|**exponent for exponent >= 0, with an integer power where exponent is integral."""
  if float(exponent).is_integer():
    return jax.lax.integer_pow(jnp.abs(x), int(exponent))
  return jnp.power(jnp.abs(x), exponent)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _signed_power(v: jax.Array, alpha: float) -> jax.Array:
  return v * _abs_pow(v, alpha - 1.0)


@_signed_power.defjvp
def _signed_power_jvp(alpha: float, primals, tangents):
  (v,), (v_dot,) = primals, tangents
  scale = _abs_pow(v, alpha - 1.0)
  return v * scale, alpha * scale * v_dot


def powerprop(v: jax.Array, alpha: float) -> jax.Array:
  """w = v * |v|**(alpha-1), elementwise; alpha == 1 returns ``v`` itself."""
  alpha = validate_alpha(alpha)
  v = _require_float(v, "powerprop")
  if alpha == 1.0:
    return v
  return _signed_power(v.astype(jnp.promote_types(v.dtype, jnp.float32)), alpha).astype(v.dtype)


def _abs_root(x: jax.Array, alpha: float) -> jax.Array:
  """|x|**(1/alpha); repeated square roots when alpha is a power of two (cheaper than pow)."""
  x = jnp.abs(x)
  if alpha.is_integer() and (int(alpha) & (int(alpha) - 1)) == 0:
    for _ in range(int(alpha).bit_length() - 1):
      x = jnp.sqrt(x)
    return x
  return jnp.power(x, 1.0 / alpha)


def powerprop_derivative(v: jax.Array, alpha: float) -> jax.Array:
  """dw/dv = alpha * |v|**(alpha-1), elementwise (finite at v = 0; 1 everywhere at alpha 1)."""
  alpha = validate_alpha(alpha)
  v = _require_float(v, "powerprop_derivative")
  if alpha == 1.0:
    return jnp.ones_like(v)
  v32 = v.astype(jnp.promote_types(v.dtype, jnp.float32))
  return (alpha * _abs_pow(v32, alpha - 1.0)).astype(v.dtype)


def inverse_powerprop(w: jax.Array, alpha: float) -> jax.Array:
  """v = sign(w) * |w|**(1/alpha), the exact inverse of :func:`powerprop`."""
  alpha = validate_alpha(alpha)
  w = _require_float(w, "inverse_powerprop")
  if alpha == 1.0:
    return w
  w32 = w.astype(jnp.promote_types(w.dtype, jnp.float32))
  return (jnp.sign(w32) * _abs_root(w32, alpha)).astype(w.dtype)


def leaf_names(path: tuple[Any, ...]) -> tuple[str, str]:
  """(module_name, name) of a pytree key path: the last key is the name, the rest the module.

  Works for Haiku (``{"mlp/~/linear_0": {"w": ...}}``), Flax linen
  (``{"params": {"Dense_0": {"kernel": ...}}}``) and ``flax.nnx.State``, whose leaves sit
  behind a trailing ``.value`` attribute key that is dropped here.
  """
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  if not keys:
    return "", ""
  return "/".join(keys[:-1]), keys[-1]


def is_selected(path: tuple[Any, ...], leaf: Any, predicate: ParamPredicate) -> bool:
  """Whether the leaf at ``path`` is reparameterised/prunable: ``predicate(module, name, shape)``."""
  return bool(predicate(*leaf_names(path), tuple(np.shape(leaf))))


def selected_leaves(params: PyTree, predicate: ParamPredicate = weights_only
                    ) -> list[tuple[str, str, Any]]:
  """``[(module_name, name, leaf)]`` of the selected leaves, in pytree order."""
  return [(*leaf_names(path), x) for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
          if is_selected(path, x, predicate)]


def layer_shapes(params: PyTree, predicate: ParamPredicate = weights_only
                 ) -> dict[str, tuple[int, ...]]:
  """``{layer: shape}`` of the selected leaves in pytree order; a layer is named by its module,
  or ``module/name`` for a module's second selected parameter."""
  out: dict[str, tuple[int, ...]] = {}
  for module, name, x in selected_leaves(params, predicate):
    out[module if module not in out else f"{module}/{name}"] = tuple(np.shape(x))
  return out


def order_layers(layers: Sequence[str], layer_order: Sequence[str] = ()) -> list[str]:
  """``layers`` sorted by the model's creation order ``layer_order`` (module names; layers
  named ``module/name`` follow their module); unknown layers keep their order, at the end.

  Pytree order is alphabetical (``linear_10`` before ``linear_2``, Haiku's ResNet
  ``block_group_0`` before ``initial_conv``), so "first" and "last" layers need this.
  """
  position = {n: i for i, n in enumerate(layer_order)}
  end = len(position)
  return sorted(layers, key=lambda n: position.get(n, position.get(n.rsplit("/", 1)[0], end)))


def zip_leaves(fn: Callable[..., Any], tree: PyTree, *others: PyTree) -> PyTree:
  """``fn`` over the leaves of ``tree`` and ``others`` paired in flatten order, in the
  structure of ``tree``.

  Unlike ``jax.tree_util.tree_map`` the containers may differ as long as the leaves line up:
  ``nnx.Optimizer`` initialises its transformation with an ``nnx.State`` (leaves inside
  ``Param`` variables) but updates it with the plain arrays, so trees a sparsity method
  holds (keep counts, masks) must pair with either.
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  rest = [jax.tree_util.tree_leaves(o) for o in others]
  for other in rest:
    if len(other) != len(leaves):
      raise ValueError(f"trees do not line up: {len(leaves)} leaves against {len(other)}")
  return jax.tree_util.tree_unflatten(treedef, [fn(*xs) for xs in zip(leaves, *rest)])


def selected(params: PyTree, predicate: ParamPredicate = weights_only) -> PyTree:
  """A pytree of Python bools with the structure of ``params``: True where reparameterised."""
  return jax.tree_util.tree_map_with_path(lambda path, x: is_selected(path, x, predicate),
                                          params)


def require_selection(params: PyTree, predicate: ParamPredicate, what: str) -> PyTree:
  """``selected(params, predicate)``, raising ValueError if it selects no leaf at all.

  A predicate that matches nothing would otherwise turn every operation into a silent no-op
  (e.g. all-True masks); ``what`` names the caller in the message. A tree with no leaves
  passes.
  """
  chosen = selected(params, predicate)
  flags = jax.tree_util.tree_leaves(chosen)
  if flags and not any(flags):  # (a tree with no leaves at all, e.g. optax's placeholder, is fine)
    names = ["/".join(leaf_names(p)) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    raise ValueError(f"{what}: the predicate selects no parameter (leaves: {names[:8]}"
                     f"{' ...' if len(names) > 8 else ''}); pass a predicate that matches the "
                     "weight leaves, e.g. lambda module, name, shape: name == 'kernel'")
  return chosen


def map_selected(fn: Callable[[jax.Array], jax.Array], params: PyTree,
                 predicate: ParamPredicate = weights_only) -> PyTree:
  """Applies ``fn`` to the selected leaves of ``params`` and leaves the others unchanged.

  Raises ValueError if ``predicate`` selects no leaf.
  """
  chosen = require_selection(params, predicate, "map_selected")
  return jax.tree_util.tree_map(lambda c, x: fn(x) if c else x, chosen, params)


def effective_params(params: PyTree, alpha: float,
                     predicate: ParamPredicate = weights_only) -> PyTree:
  """The weights the model uses: powerprop(v, alpha) on selected leaves, others as stored."""
  alpha = validate_alpha(alpha)
  return map_selected(lambda v: powerprop(v, alpha), params, predicate)


def reparameterise_init(params: PyTree, alpha: float,
                        predicate: ParamPredicate = weights_only) -> PyTree:
  """Turns a standard initialisation ``u`` into ``v = inverse_powerprop(u)``.

  The effective weights at init then equal ``u`` exactly: the unmodified model's init.
  """
  alpha = validate_alpha(alpha)
  return map_selected(lambda u: inverse_powerprop(u, alpha), params, predicate)


def check_no_zero_init(params: PyTree, alpha: float,
                       predicate: ParamPredicate = weights_only) -> None:
  """Raises ValueError if a reparameterised leaf is initialised all-zero with alpha > 1.

  v = 0 is a fixed point of Powerpropagation (dw/dv = alpha |v|^(alpha-1) = 0), so such a
  layer never trains; e.g. ``hk.nets.ResNet``'s logits layer is zero-initialised by default.
  Call on concrete params (outside jit).
  """
  if validate_alpha(alpha) == 1.0:
    return
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  bad = ["/".join(leaf_names(path)) for (path, x), chosen
         in zip(flat, jax.tree_util.tree_leaves(selected(params, predicate)))
         if chosen and not np.any(np.asarray(x))]
  if bad:
    raise ValueError(f"parameters initialised to all zeros can never move under "
                     f"Powerpropagation with alpha={alpha} (v = 0 is a fixed point): {bad}; "
                     "give them a non-zero initializer or exclude them with the predicate")
