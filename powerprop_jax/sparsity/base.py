"""Masks in the optimizer state: the wrapper every sparsity method plugs into.

``sparse_optimizer(inner, method)`` is an optax transformation whose state carries

* ``masks``: the forward masks; the model computes with ``params * masks``;
* ``grad_masks``: where updates are applied (equal to ``masks`` except for Top-KAST, whose
  backward set is larger than its forward set);
* the method's own state and a step count.

One ``update`` call, given the gradient ``g`` w.r.t. the stored params and (optionally) the
dense gradient w.r.t. the effective weights as ``dense_grads=...``:

1. zeroes ``g`` outside ``grad_masks`` and runs ``inner`` on it: ``u``;
2. hands ``params + u`` to ``method.update``, which returns new params and masks (a pruning
   step, a drop/grow step, or nothing, decided inside jit from the step count);
3. resets ``inner``'s param-shaped state (e.g. momentum) to 0 where a weight was (re)grown;
4. returns the update that takes ``params`` to the method's params.

A method is a pair of pure functions (``SparsityMethod``), jittable with static shapes.

Non-finite gradients: an entry outside ``grad_masks`` (pruned, or frozen) is selected away
with ``jnp.where``, never multiplied by a 0 mask, so a NaN or inf gradient there leaves it
bit-identical. A NaN gradient at a trainable entry is not hidden: the inner optimizer turns
it into a NaN parameter at that entry (and wherever ``inner`` mixes entries, e.g. global-norm
clipping), so the next loss is NaN and the training loop stops at the first non-finite loss
(``train.TrainingDiverged``). Skipping such steps silently would hide a diverged run; wrap
``inner`` in ``optax.apply_if_finite`` to skip them on purpose.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from powerprop_jax import masks as masks_lib

PyTree = Any


class MaskUpdate(NamedTuple):
  """What a method's ``update`` returns."""
  params: PyTree        # params after the mask step (pruned entries set as the method wants)
  masks: PyTree         # forward masks (bool, params' structure)
  grad_masks: PyTree    # where the next updates apply (bool, params' structure)
  state: Any            # the method's own state


class SparsityMethod(NamedTuple):
  """A sparsity method as pure functions.

  init(params) -> MaskUpdate at step 0 (params may be pruned/initialised sparse here).
  update(params, dense_grads, masks, grad_masks, state, step) -> MaskUpdate.
  penalty_grads(params, masks, grad_masks) -> a gradient tree added to the loss gradient
    before the inner optimizer (e.g. Top-KAST's exploration penalty), or None.
  """
  init: Callable[[PyTree], MaskUpdate]
  update: Callable[..., MaskUpdate]
  penalty_grads: Optional[Callable[[PyTree, PyTree, PyTree], PyTree]] = None


class SparseState(NamedTuple):
  inner_state: optax.OptState
  masks: PyTree
  grad_masks: PyTree
  method_state: Any
  count: jax.Array


def _where(mask_tree: PyTree, on: PyTree, off: PyTree | float) -> PyTree:
  if not isinstance(off, (int, float)):
    return jax.tree_util.tree_map(lambda m, a, b: jnp.where(m, a, b), mask_tree, on, off)
  return jax.tree_util.tree_map(lambda m, a: jnp.where(m, a, jnp.asarray(off, a.dtype)),
                                mask_tree, on)


def sparse_optimizer(inner: optax.GradientTransformation, method: SparsityMethod
                     ) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so that params follow the masks ``method`` maintains.

  ``init(params)`` runs ``method.init`` once; the model's forward pass multiplies by the
  masks from the start (:func:`forward_params`), and the first ``update`` sets the stored
  params to the method's (e.g. zero outside a random RigL mask).
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    start = method.init(params)
    masks_lib.check_masks(params, start.masks)
    return SparseState(inner.init(start.params), start.masks, start.grad_masks, start.state,
                       jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, dense_grads: Optional[PyTree] = None,
                **extra_args):
    if params is None:
      raise ValueError("sparse_optimizer needs the current params: call update(g, s, params)")
    if dense_grads is None:
      dense_grads = updates
    if method.penalty_grads is not None:
      updates = jax.tree_util.tree_map(
          jnp.add, updates, method.penalty_grads(params, state.masks, state.grad_masks))
    grads = _where(state.grad_masks, updates, 0.0)
    u, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
    u = _where(state.grad_masks, u, 0.0)
    stepped = optax.apply_updates(params, u)
    new = method.update(stepped, dense_grads,
                        state.masks, state.grad_masks, state.method_state, state.count + 1)
    grown = jax.tree_util.tree_map(lambda new_m, old_m: new_m & ~old_m,
                                   new.grad_masks, state.grad_masks)
    inner_state = optax.tree_utils.tree_map_params(
        inner, lambda s, g: jnp.where(g, jnp.zeros_like(s), s)
        if jnp.shape(s) == jnp.shape(g) else s, inner_state, grown)
    # where q == p the update is exactly 0 (q - p would be NaN for an inf weight)
    final = jax.tree_util.tree_map(lambda p, q: jnp.where(q == p, jnp.zeros_like(p), q - p),
                                   params, new.params)
    return final, SparseState(inner_state, new.masks, new.grad_masks, new.state,
                              state.count + 1)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_sparse_state(opt_state: optax.OptState) -> Optional[SparseState]:
  """The SparseState inside ``opt_state`` (searching through chains), or None."""
  leaves = jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, SparseState))
  for leaf in leaves:
    if isinstance(leaf, SparseState):
      return leaf
  return None


def forward_params(params: PyTree, opt_state: optax.OptState) -> PyTree:
  """params * masks with the forward masks held in ``opt_state`` (params if it has none)."""
  sparse = find_sparse_state(opt_state)
  return params if sparse is None else masks_lib.apply_masks(params, sparse.masks)


def fixed_masks(masks: PyTree, grad_masks: Optional[PyTree] = None) -> SparsityMethod:
  """A method with constant masks: pruned entries are zeroed and stay exactly zero.

  ``grad_masks`` (default: ``masks``) restricts where updates apply, e.g. continual
  learning trains only the free weights while earlier tasks' weights are used frozen.
  ``update`` reads the masks from the optimizer state, never from this closure, so one
  compiled train step serves every ``fixed_masks`` state.
  """
  grad_masks = masks if grad_masks is None else grad_masks

  def init(params):
    fwd = masks_lib.match_structure(masks, params)
    grad = masks_lib.match_structure(grad_masks, params)
    masks_lib.check_masks(params, grad)
    return MaskUpdate(masks_lib.apply_masks(params, fwd), fwd, grad, ())

  def update(params, dense_grads, current, grad_masks, state, step):
    del dense_grads, step
    return MaskUpdate(masks_lib.apply_masks(params, current), current, grad_masks, state)

  return SparsityMethod(init, update)


def masked_optimizer(inner: optax.GradientTransformation, masks: PyTree
                     ) -> optax.GradientTransformationExtraArgs:
  """``inner`` with fixed masks in its state: pruned weights stay exactly 0 through training.

  The first update also zeroes any pruned weight that was not already zero.
  """
  return sparse_optimizer(inner, fixed_masks(masks))
