"""Library edges: misaligned candidates, empty trees, NaN gradients, k out of range."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import powerprop_jax as pp


def _params():
  rng = np.random.default_rng(0)
  return {"a": {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                "b": jnp.zeros((3,), jnp.float32)},
          "c": {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}}


def _all_candidates(params):
  return jax.tree_util.tree_map(lambda x: np.ones(x.shape, bool), params)


# --- magnitude_masks(candidates=...) -------------------------------------------------------

@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_candidates_with_an_extra_leaf_are_refused(scope):
  params = _params()
  cands = _all_candidates(params)
  cands["d"] = {"w": np.ones((2, 2), bool)}
  with pytest.raises(ValueError, match=r"candidates has a leaf 'd/w' \(shape \(2, 2\)\)"):
    pp.magnitude_masks(params, 0.5, scope, candidates=cands)


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_candidates_missing_a_leaf_are_refused(scope):
  params = _params()
  cands = _all_candidates(params)
  del cands["c"]
  with pytest.raises(ValueError, match=r"no leaf for the parameter 'c/w' \(shape \(3, 2\)\)"):
    pp.magnitude_masks(params, 0.5, scope, candidates=cands)


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("shape", [(1, 3), (3,), (4, 1), ()])
def test_candidates_of_a_broadcastable_shape_are_refused(scope, shape):
  params = _params()
  cands = _all_candidates(params)
  cands["a"]["w"] = np.ones(shape, bool)
  with pytest.raises(ValueError, match=(rf"candidates at 'a/w' has shape {re_shape(shape)}, "
                                        r"the parameter has shape \(4, 3\)")):
    pp.magnitude_masks(params, 0.5, scope, candidates=cands)


def re_shape(shape):
  return str(shape).replace("(", r"\(").replace(")", r"\)")


def test_aligned_candidates_still_restrict_the_kept_weights():
  params = _params()
  cands = _all_candidates(params)
  cands["a"]["w"] = np.arange(12).reshape(4, 3) < 6   # only the first 6 entries may be kept
  m = pp.magnitude_masks(params, 0.5, "layerwise", candidates=cands)
  assert int(m["a"]["w"].sum()) == 3                     # half of the 6 candidates
  assert not np.asarray(m["a"]["w"]).ravel()[6:].any()


# --- empty trees ---------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_empty_tree_gives_an_empty_tree_under_both_scopes(scope):
  assert pp.magnitude_masks({}, 0.5, scope) == {}
  assert pp.magnitude_masks({"a": {}}, 0.5, scope) == {"a": {}}


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_empty_tree_still_validates_the_sparsity(scope):
  with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\), got 1.5"):
    pp.magnitude_masks({}, 1.5, scope)


# --- NaN gradients through the sparse optimizer -------------------------------------------

_MASK = np.array([[True, False, True], [False, True, True], [True, True, False],
                  [False, False, True]])
_INNERS = {
    "sgd": optax.sgd(0.1),
    "nesterov": optax.sgd(0.1, momentum=0.9, nesterov=True),
    "adam": optax.adam(0.1),
    "clip_decay": optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(1e-2),
                              optax.sgd(0.1, momentum=0.9)),
}


def _steps(tx, params, grads_seq, opt_state=None):
  state = tx.init(params) if opt_state is None else opt_state
  step = jax.jit(lambda p, s, g: tx.update(g, s, p, dense_grads=g))
  history = [params]
  for g in grads_seq:
    u, state = step(params, state, g)
    params = optax.apply_updates(params, u)
    history.append(params)
  return history, state


@pytest.mark.parametrize("inner", sorted(_INNERS))
def test_nan_gradient_at_a_frozen_entry_leaves_it_bit_identical(inner):
  """Forward-active but frozen (grad_masks False) weights must not turn NaN."""
  w = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)), jnp.float32)
  params = {"l": {"w": w}}
  fwd = {"l": {"w": np.ones((4, 3), bool)}}
  grad_masks = {"l": {"w": _MASK}}
  tx = pp.sparse_optimizer(_INNERS[inner], pp.sparsity.fixed_masks(fwd, grad_masks))
  g = {"l": {"w": jnp.where(_MASK, 0.5, jnp.nan)}}
  history, _ = _steps(tx, params, [g] * 3)
  last = np.asarray(history[-1]["l"]["w"])
  np.testing.assert_array_equal(last[~_MASK], np.asarray(w)[~_MASK])
  assert np.isfinite(last).all()
  assert (last[_MASK] != np.asarray(w)[_MASK]).all()   # the trainable ones did train


@pytest.mark.parametrize("inner", ["sgd", "nesterov"])
def test_nan_gradient_at_a_pruned_entry_keeps_it_zero(inner):
  w = jnp.asarray(np.random.default_rng(2).normal(size=(4, 3)), jnp.float32)
  tx = pp.masked_optimizer(_INNERS[inner], {"l": {"w": _MASK}})
  g = {"l": {"w": jnp.where(_MASK, 0.5, jnp.nan)}}
  history, _ = _steps(tx, {"l": {"w": w}}, [g] * 3)
  last = np.asarray(history[-1]["l"]["w"])
  np.testing.assert_array_equal(last[~_MASK], 0.0)
  assert np.isfinite(last).all()


def test_frozen_inf_weight_stays_inf_not_nan():
  """q - p would be inf - inf = NaN for an inf weight the method leaves as it is."""
  w = jnp.asarray([[np.inf, 1.0], [2.0, 3.0]], jnp.float32)
  fwd = {"l": {"w": np.ones((2, 2), bool)}}
  grad_masks = {"l": {"w": np.array([[False, True], [True, True]])}}
  tx = pp.sparse_optimizer(optax.sgd(0.1), pp.sparsity.fixed_masks(fwd, grad_masks))
  history, _ = _steps(tx, {"l": {"w": w}}, [{"l": {"w": jnp.ones((2, 2))}}])
  assert float(history[-1]["l"]["w"][0, 0]) == np.inf


@pytest.mark.parametrize("grow_init", ["zero", "min_active", "w_epsilon"])
def test_rigl_nan_dense_gradient_at_inactive_weights_neither_grows_nor_poisons(grow_init):
  """A NaN used to rank as the largest |g|: inactive weights grew, as NaN under min_active."""
  params = {"l": {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}}
  method = pp.sparsity.rigl({"l": {"w": 4}}, 1.0, 1, 1000, grow_init=grow_init, alpha=2.0)
  tx = pp.sparse_optimizer(optax.sgd(0.1), method)
  state = tx.init(params)
  active = np.asarray(state.masks["l"]["w"])
  # NaN at two inactive weights, finite elsewhere: the finite inactive ones must win
  g = np.where(active, 0.1, 1.0).astype(np.float32)
  inactive = np.flatnonzero(~active.ravel())
  g.ravel()[inactive[:2]] = np.nan
  p0 = method.init(params).params
  u, state = tx.update({"l": {"w": jnp.asarray(g)}}, state, p0, dense_grads={"l": {"w": g}})
  new = np.asarray(optax.apply_updates(p0, u)["l"]["w"])
  assert np.isfinite(new).all()
  m = np.asarray(state.masks["l"]["w"])
  assert m.sum() == 4
  assert not m.ravel()[inactive[:2]].any()    # NaN-gradient weights were not grown
  assert m.ravel()[inactive[2:]].all()        # the finite ones were


def test_rigl_all_nan_gradients_grow_with_finite_values():
  """Even when only NaN-gradient weights are left to grow, the grown values are finite."""
  params = {"l": {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}}
  method = pp.sparsity.rigl({"l": {"w": 4}}, 1.0, 1, 1000, grow_init="min_active", alpha=2.0)
  start = method.init(params)
  g = {"l": {"w": jnp.full((2, 4), jnp.nan)}}
  out = method.update(start.params, g, start.masks, start.grad_masks, start.state,
                      jnp.asarray(1))
  assert int(out.masks["l"]["w"].sum()) == 4
  assert np.isfinite(np.asarray(out.params["l"]["w"])).all()


@pytest.mark.parametrize("inner", sorted(_INNERS))
def test_nan_gradient_at_a_trainable_entry_is_not_hidden(inner):
  """The documented contract: a NaN gradient at a trainable entry makes that parameter NaN
  (the training loop then stops at the non-finite loss); frozen entries stay bit-identical."""
  w = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)), jnp.float32)
  fwd = {"l": {"w": np.ones((4, 3), bool)}}
  tx = pp.sparse_optimizer(_INNERS[inner],
                           pp.sparsity.fixed_masks(fwd, {"l": {"w": _MASK}}))
  g = np.full((4, 3), 0.5, np.float32)
  g[0, 0] = np.nan                                    # a trainable entry
  history, _ = _steps(tx, {"l": {"w": w}}, [{"l": {"w": jnp.asarray(g)}}])
  last = np.asarray(history[-1]["l"]["w"])
  assert np.isnan(last[0, 0])
  np.testing.assert_array_equal(last[~_MASK], np.asarray(w)[~_MASK])
  if inner != "clip_decay":                           # global-norm clipping mixes entries
    assert np.isfinite(np.delete(last.ravel(), 0)).all()


# --- top_k_mask's k --------------------------------------------------------------------------

@pytest.mark.parametrize("k", [-1, 6, 2.5, np.int64(7), jnp.asarray(6), np.asarray([2])])
def test_concrete_k_out_of_range_raises(k):
  with pytest.raises(ValueError, match=r"k must be an integer in \[0, 5\]"):
    pp.top_k_mask(jnp.arange(5.0), k)


def test_concrete_k_in_range_accepts_ints_integral_floats_and_arrays():
  x = jnp.arange(5.0)
  want = np.array([False, False, True, True, True])
  for k in [3, np.int32(3), 3.0, jnp.asarray(3)]:
    np.testing.assert_array_equal(pp.top_k_mask(x, k), want)


def test_traced_k_out_of_range_is_clamped_under_jit():
  """Documented: a traced k < 0 keeps nothing, k > size keeps everything."""
  x = jnp.arange(5.0)
  f = jax.jit(pp.top_k_mask)
  np.testing.assert_array_equal(f(x, 9), np.ones(5, bool))
  np.testing.assert_array_equal(f(x, -3), np.zeros(5, bool))
  np.testing.assert_array_equal(f(x, 2), [False, False, False, True, True])


def test_traced_k_out_of_range_is_reported_under_checkify():
  x = jnp.arange(5.0)
  checked = jax.jit(checkify.checkify(pp.top_k_mask, errors=checkify.user_checks))
  err, _ = checked(x, 9)
  with pytest.raises(checkify.JaxRuntimeError, match=r"k must be in \[0, 5\], got 9"):
    err.throw()
  err, _ = checked(x, -1)
  assert err.get() is not None
  err, out = checked(x, 5)
  assert err.get() is None
  np.testing.assert_array_equal(out, np.ones(5, bool))


def test_traced_k_check_survives_vmap_and_grad_free_use():
  """The check is a no-op without checkify: vmap over k works and clamps per row."""
  x = jnp.arange(4.0)
  out = jax.vmap(lambda k: pp.top_k_mask(x, k))(jnp.asarray([-1, 2, 10]))
  chex.assert_trees_all_equal(np.asarray(out), np.array(
      [[False] * 4, [False, False, True, True], [True] * 4]))
