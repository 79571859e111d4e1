"""Tests written to fail for specific wrong versions of the library (each test names one).

* RigL's drop fraction decaying linearly instead of by the cosine schedule;
* "first"/"last" dense layers taken in pytree (alphabetical) order, not creation order;
* ``local_slice`` rows of two processes overlapping or leaving gaps;
* momentum moving a weight outside ``grad_masks`` (after a Top-KAST refresh, or frozen);
* SET/RigL's PRNG key not advancing between mask updates.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import powerprop_jax as pp
from powerprop_jax import transform
from powerprop_jax.sparsity import distributions, schedules

if importlib.util.find_spec("powerprop_jax.experiment.data") is not None:
  from powerprop_jax.experiment.data import base as data_base  # pylint: disable=g-import-not-at-top
  from powerprop_jax.experiment import models  # pylint: disable=g-import-not-at-top
else:  # before the move into powerprop_jax/experiment
  from powerprop_jax.data import base as data_base  # pylint: disable=g-import-not-at-top
  from powerprop_jax import models  # pylint: disable=g-import-not-at-top


# --- RigL's cosine drop fraction -------------------------------------------------------------

def _cosine_count(t: int, end: int, active: int, initial: float = 0.3) -> int:
  """floor(f_t * n_active), f_t = initial (1 + cos(pi t / end)) / 2, in float64."""
  return int(np.floor(initial * (1.0 + np.cos(np.pi * t / end)) / 2.0 * active))


def _drop_counts(method, params, steps):
  """{t: (dropped, grown)} of method.update at each step t, gradients chosen so that no
  weight dropped at t is grown back at t (active: 0, inactive: >= 1)."""
  start = method.init(params)
  p, m, key = start.params, start.masks, start.state
  rng = np.random.default_rng(0)
  update = jax.jit(method.update)
  out = {}
  for t in steps:
    g = jax.tree_util.tree_map(
        lambda mask: jnp.where(mask, 0.0, 1.0 + jnp.asarray(rng.random(mask.shape), jnp.float32)),
        m)
    # active weights: fresh distinct magnitudes so the drop set is well defined
    p = jax.tree_util.tree_map(
        lambda x, mask: jnp.where(mask, jnp.asarray(rng.random(x.shape) + 0.5, x.dtype), 0.0),
        p, m)
    new = update(p, g, m, m, key, jnp.asarray(t))
    old_w, new_w = np.asarray(m["l"]["w"]), np.asarray(new.masks["l"]["w"])
    out[t] = (int((old_w & ~new_w).sum()), int((new_w & ~old_w).sum()))
    p, m, key = new.params, new.masks, new.state
  return out


def test_drop_count_follows_the_cosine_schedule():
  """Caught wrong version: f_t = 0.3 (1 - t / T_end) (linear). With 97 active weights and
  T_end = 400: cosine drops 24, 14, 4 at t = 100, 200, 300; linear would drop 21, 14, 7."""
  active, end = 97, 400
  params = {"l": {"w": jnp.ones((20, 20), jnp.float32)}}
  method = pp.sparsity.rigl({"l": {"w": active}}, 0.3, 100, end)
  counts = _drop_counts(method, params, [50, 100, 150, 200, 300, 400, 500])
  want = {t: _cosine_count(t, end, active) for t in (100, 200, 300, 400)}
  assert want == {100: 24, 200: 14, 300: 4, 400: 0}
  for t, n in want.items():
    assert counts[t] == (n, n), (t, counts[t], n)
  for t in (50, 150, 500):   # not an update step, or past T_end
    assert counts[t] == (0, 0), (t, counts[t])


def test_drop_count_follows_the_cosine_schedule_through_the_builder_defaults():
  """The config defaults (drop 0.3, every 100, end 0 = 75% of training) on the cosine:
  T_end = int(0.75 * 1067) = 800, so t = T_end/4, T_end/2, 3 T_end/4 are update steps."""
  from powerprop_jax.sparsity import builders  # pylint: disable=g-import-not-at-top
  params = {"l": {"w": jnp.ones((20, 20), jnp.float32)}}
  cfg = _base_config().sparsity
  cfg.update(method="rigl", level=0.7575)     # keeps 97 of 400 (no float32 edge at T/2)
  method = builders.build_method(cfg, params, 1067, 1.0)
  active = 97
  counts = _drop_counts(method, params, [200, 400, 600, 800, 900])
  for t in (200, 400, 600):
    n = _cosine_count(t, 800, active)
    assert counts[t] == (n, n), (t, counts[t], n)
  assert [counts[200][0], counts[600][0]] == [24, 4]      # linear: 21, 7
  assert counts[800] == (0, 0) and counts[900] == (0, 0)


def _base_config():
  if importlib.util.find_spec("powerprop_jax.experiment.config") is not None:
    from powerprop_jax.experiment import config as config_lib  # pylint: disable=g-import-not-at-top
  else:
    from powerprop_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.base()


# --- "first"/"last" in creation order ---------------------------------------------------------

def _linear_params():
  rng = np.random.default_rng(0)
  return {f"linear_{i}": {"w": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32),
                          "b": jnp.zeros((8,), jnp.float32)} for i in (0, 1, 2, 10)}


_LINEAR_ORDER = ["linear_0", "linear_1", "linear_2", "linear_10"]


def test_order_layers_follows_creation_order_not_names():
  """Caught wrong version: order_layers returning the pytree (sorted-name) order."""
  names = list(transform.layer_shapes(_linear_params()))
  assert names == ["linear_0", "linear_1", "linear_10", "linear_2"]   # pytree order
  assert transform.order_layers(names, _LINEAR_ORDER) == _LINEAR_ORDER
  # module/name layers follow their module; unknown ones go last, in their order
  assert transform.order_layers(["b/w2", "z", "a", "b"], ["b", "a"]) == ["b/w2", "b", "a", "z"]


def test_first_and_last_dense_layers_follow_creation_order():
  names = list(transform.layer_shapes(_linear_params()))
  assert distributions.resolve_dense_layers(names, "first,last", _LINEAR_ORDER) == {
      "linear_0", "linear_10"}
  assert distributions.resolve_dense_layers(names, "last", _LINEAR_ORDER) == {"linear_10"}
  counts = distributions.keep_counts(_linear_params(), 0.75, "uniform", "last",
                                     layer_order=_LINEAR_ORDER)
  assert counts == {"linear_0": 16, "linear_1": 16, "linear_2": 16, "linear_10": 64}


def test_builders_pass_creation_order_to_first_and_last():
  cfg = _base_config().sparsity
  cfg.update(method="topkast", level=0.75, dense_layers="first,last", update_every=1)
  params = _linear_params()
  method = pp.sparsity.build_method(cfg, params, 10, 1.0, layer_order=_LINEAR_ORDER)
  masks = method.init(params).masks
  kept = {n: int(masks[n]["w"].sum()) for n in params}
  assert kept == {"linear_0": 64, "linear_1": 16, "linear_2": 16, "linear_10": 64}


def test_resnet_first_layer_is_initial_conv_not_block_group_0():
  """hk.nets.ResNet's params sort block_group_0 before initial_conv and logits last by
  luck; the creation order must name initial_conv first."""
  cfg = _base_config().model
  cfg.update(name="resnet_tiny", num_classes=10)
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  order = models.creation_order(cfg, x)
  net = models.model_from_config(cfg)
  params, _ = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), x, True))
  names = list(transform.layer_shapes(params))
  assert "block_group_0" in names[0] and "initial_conv" not in names[0]
  first_last = distributions.resolve_dense_layers(names, "first,last", order)
  assert {n.rsplit("/", 1)[-1] for n in first_last} == {"initial_conv", "logits"}
  counts = distributions.keep_counts(params, 0.9, "uniform", "first", layer_order=order)
  (first,) = [n for n in counts if n.endswith("initial_conv")]
  assert counts[first] == int(np.prod(transform.layer_shapes(params)[first]))


# --- local_slice partitions every global batch ---------------------------------------------

def test_local_slices_partition_the_global_batch_exactly():
  """Caught wrong versions: rows of two processes overlapping (stop one too far) or gaps
  (stop one short, or a size rounded down); a pure-numpy check over many pairs."""
  for global_batch in range(1, 97):
    for process_count in range(1, 17):
      try:
        parts = [data_base.local_slice(global_batch, i, process_count)
                 for i in range(process_count)]
      except ValueError:
        assert global_batch % process_count, (global_batch, process_count)  # only uneven
        continue
      rows = np.concatenate([np.arange(global_batch)[s] for s in parts])
      np.testing.assert_array_equal(rows, np.arange(global_batch),
                                    err_msg=f"{global_batch} over {process_count}")
      sizes = {len(range(global_batch)[s]) for s in parts}
      assert max(sizes) - min(sizes) <= 1, (global_batch, process_count, sizes)


# --- momentum never moves a weight outside grad_masks ------------------------------------------

def _trace(sparse_state):
  """The momentum trace inside a SparseState's inner optimizer state."""
  (trace,) = [x for x in jax.tree_util.tree_leaves(
      sparse_state.inner_state, is_leaf=lambda x: isinstance(x, optax.TraceState))
              if isinstance(x, optax.TraceState)]
  return trace.trace


def _frozen_entries_never_move(tx, params, grads, state=None):
  """Runs the steps; asserts entries outside the grad_masks held before each step are
  bit-identical after it. Returns how many entries left grad_masks with nonzero momentum."""
  state = tx.init(params) if state is None else state
  step = jax.jit(lambda p, s, g: tx.update(g, s, p, dense_grads=g))
  left_with_momentum = 0
  for g in grads:
    before = pp.sparsity.find_sparse_state(state)
    u, state = step(params, state, g)
    new = optax.apply_updates(params, u)
    for name in params:
      frozen = ~np.asarray(before.grad_masks[name]["w"])
      np.testing.assert_array_equal(np.asarray(new[name]["w"])[frozen],
                                    np.asarray(params[name]["w"])[frozen])
      after = pp.sparsity.find_sparse_state(state)
      left = np.asarray(before.grad_masks[name]["w"]) & ~np.asarray(after.grad_masks[name]["w"])
      trace = np.asarray(_trace(after)[name]["w"])
      left_with_momentum += int((left & (trace != 0)).sum())
    params = new
  return left_with_momentum


@pytest.mark.parametrize("nesterov", [False, True])
def test_weight_that_left_the_topkast_backward_set_does_not_move(nesterov):
  """Caught wrong version: the inner update not masked by grad_masks after the optimizer
  (momentum keeps pushing a weight the last refresh took out of B)."""
  rng = np.random.default_rng(0)
  params = {"l": {"w": jnp.asarray(rng.normal(size=(10, 10)), jnp.float32)}}
  method = pp.sparsity.top_kast({"l": {"w": 20}}, {"l": {"w": 40}}, 1e-4, 1, 1000)
  tx = pp.sparse_optimizer(optax.sgd(0.5, momentum=0.9, nesterov=nesterov), method)
  grads = [{"l": {"w": jnp.asarray(rng.normal(size=(10, 10)), jnp.float32)}}
           for _ in range(12)]
  assert _frozen_entries_never_move(tx, params, grads) > 0   # the case did occur


@pytest.mark.parametrize("inner", ["momentum", "nesterov", "momentum_decay"])
def test_weight_frozen_with_momentum_left_over_does_not_move(inner):
  """fixed_masks after a phase that trained every weight (continual learning freezes a task's
  weights while the optimizer state keeps their momentum): frozen weights stay bit-identical."""
  inners = {"momentum": optax.sgd(0.1, momentum=0.9),
            "nesterov": optax.sgd(0.1, momentum=0.9, nesterov=True),
            "momentum_decay": optax.chain(optax.add_decayed_weights(1e-2),
                                          optax.sgd(0.1, momentum=0.9))}
  rng = np.random.default_rng(1)
  params = {"l": {"w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)}}
  everything = {"l": {"w": np.ones((6, 5), bool)}}
  free = {"l": {"w": rng.random((6, 5)) < 0.5}}
  grads = [{"l": {"w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)}} for _ in range(6)]
  tx = pp.sparse_optimizer(inners[inner], pp.sparsity.fixed_masks(everything, free))
  # phase 1: every weight trains, building momentum
  phase1 = pp.sparse_optimizer(inners[inner], pp.sparsity.fixed_masks(everything))
  state = phase1.init(params)
  for g in grads[:3]:
    u, state = phase1.update(g, state, params)
    params = optax.apply_updates(params, u)
  state = state._replace(grad_masks=jax.tree_util.tree_map(jnp.asarray, free))
  assert (np.asarray(_trace(state)["l"]["w"])[~free["l"]["w"]] != 0).all()   # left over
  frozen_before = np.asarray(params["l"]["w"])[~free["l"]["w"]]
  step = jax.jit(lambda p, s, g: tx.update(g, s, p))
  for g in grads[3:]:
    u, state = step(params, state, g)
    params = optax.apply_updates(params, u)
  np.testing.assert_array_equal(np.asarray(params["l"]["w"])[~free["l"]["w"]], frozen_before)


# --- the PRNG key advances ---------------------------------------------------------------------

def test_set_grows_different_weights_on_consecutive_identical_updates():
  """Caught wrong version: drop_grow returning the key it was given (the same draw each
  time). Same params, masks, gradients and step; only the carried key differs."""
  params = {"l": {"w": jnp.asarray(np.random.default_rng(0).normal(size=(20, 20)),
                                   jnp.float32)}}
  method = pp.sparsity.set_method({"l": {"w": 100}}, 0.3, 1, 1000)
  start = method.init(params)
  g = jax.tree_util.tree_map(jnp.zeros_like, params)
  update = jax.jit(method.update)
  first = update(start.params, g, start.masks, start.masks, start.state, jnp.asarray(1))
  second = update(start.params, g, start.masks, start.masks, first.state,
                         jnp.asarray(1))
  grown1 = np.asarray(first.masks["l"]["w"]) & ~np.asarray(start.masks["l"]["w"])
  grown2 = np.asarray(second.masks["l"]["w"]) & ~np.asarray(start.masks["l"]["w"])
  assert 0 < grown1.sum() <= 29 and 0 < grown2.sum() <= 29   # a dropped one may regrow
  assert (grown1 != grown2).any()
  assert not np.array_equal(first.masks["l"]["w"], second.masks["l"]["w"])
  assert not np.array_equal(np.asarray(first.state), np.asarray(start.state))


def test_set_through_the_optimizer_draws_anew_at_each_update():
  """Two updates of the jitted optimizer from the same params and masks differ."""
  params = {"l": {"w": jnp.asarray(np.random.default_rng(1).normal(size=(20, 20)),
                                   jnp.float32)}}
  method = pp.sparsity.set_method({"l": {"w": 100}}, 0.3, 1, 1000)
  tx = pp.sparse_optimizer(optax.sgd(0.0), method)
  state0 = tx.init(params)
  p0 = method.init(params).params
  g = jax.tree_util.tree_map(jnp.zeros_like, params)
  step = jax.jit(lambda p, s: tx.update(g, s, p))
  _, state1 = step(p0, state0)
  _, state2 = step(p0, state1._replace(masks=state0.masks, grad_masks=state0.grad_masks,
                                       count=state0.count))
  assert not np.array_equal(np.asarray(state1.masks["l"]["w"]),
                            np.asarray(state2.masks["l"]["w"]))


def test_rigl_random_init_differs_by_layer_and_seed():
  """Random masks from one key per leaf: two same-shaped layers, or two seeds, differ."""
  params = {n: {"w": jnp.ones((10, 10), jnp.float32)} for n in ("a", "b")}
  counts = {"a": {"w": 30}, "b": {"w": 30}}
  m0 = pp.sparsity.rigl(counts, end_step=100, seed=0).init(params).masks
  m1 = pp.sparsity.rigl(counts, end_step=100, seed=1).init(params).masks
  assert not np.array_equal(m0["a"]["w"], m0["b"]["w"])
  assert not np.array_equal(m0["a"]["w"], m1["a"]["w"])
  assert int(m0["a"]["w"].sum()) == int(m1["b"]["w"].sum()) == 30


def test_cosine_schedule_function_matches_the_formula():
  """schedules.cosine_drop_fraction itself, at several t (float32 tolerance)."""
  for t in (0, 100, 200, 300, 400, 600):
    want = 0.3 * (1 + np.cos(np.pi * t / 400)) / 2 if t <= 400 else 0.0
    np.testing.assert_allclose(float(schedules.cosine_drop_fraction(t, 0.3, 400)), want,
                               atol=1e-6)
