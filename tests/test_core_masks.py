"""Magnitude masks: exact counts, ties, scope, selection, errors, masks through optimizer steps."""

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

import powerprop_jax as pp
from powerprop_jax import curves


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"a": {"w": jnp.asarray(rng.normal(size=(40, 30)), jnp.float32),
                "b": jnp.asarray(rng.normal(size=(30,)), jnp.float32)},
          "c": {"w": jnp.asarray(3 * rng.normal(size=(30, 7)), jnp.float32),
                "b": jnp.asarray(rng.normal(size=(7,)), jnp.float32)}}


class MagnitudeMasksTest(chex.TestCase):

  def test_global_exact_count_and_largest_kept(self):
    params = _params()
    n = 40 * 30 + 30 * 7
    for s in [0.0, 0.1, 0.5, 0.9, 0.95, 0.999]:
      m = pp.magnitude_masks(params, s, "global")
      kept = int(m["a"]["w"].sum() + m["c"]["w"].sum())
      self.assertEqual(kept, round((1 - s) * n))
      self.assertTrue(bool(m["a"]["b"].all() and m["c"]["b"].all()))  # biases untouched
      all_w = np.concatenate([np.abs(params["a"]["w"]).ravel(), np.abs(params["c"]["w"]).ravel()])
      all_m = np.concatenate([np.asarray(m["a"]["w"]).ravel(), np.asarray(m["c"]["w"]).ravel()])
      if 0 < kept < n:
        self.assertGreaterEqual(all_w[all_m].min(), all_w[~all_m].max())

  def test_layerwise_exact_count_per_layer(self):
    params = _params(1)
    m = pp.magnitude_masks(params, 0.9, "layerwise")
    self.assertEqual(int(m["a"]["w"].sum()), round(0.1 * 1200))
    self.assertEqual(int(m["c"]["w"].sum()), round(0.1 * 210))
    m = pp.magnitude_masks(params, {"a": 0.5, "c": 0.0}, "layerwise")
    self.assertEqual(int(m["a"]["w"].sum()), 600)
    self.assertTrue(bool(m["c"]["w"].all()))

  def test_ties_broken_deterministically(self):
    params = {"l": {"w": jnp.ones((10, 10))}}
    m1 = pp.magnitude_masks(params, 0.73)
    m2 = jax.jit(lambda p: pp.magnitude_masks(p, 0.73))(params)
    self.assertEqual(int(m1["l"]["w"].sum()), 27)
    chex.assert_trees_all_equal(m1, m2)
    np.testing.assert_array_equal(np.asarray(m1["l"]["w"]).ravel(), np.arange(100) < 27)

  def test_global_and_layerwise_differ(self):
    params = _params(2)  # layer c has 3x larger weights: global pruning spares it
    g = pp.magnitude_masks(params, 0.8, "global")
    lw = pp.magnitude_masks(params, 0.8, "layerwise")
    self.assertGreater(int(g["c"]["w"].sum()), int(lw["c"]["w"].sum()))

  def test_apply_masks_zeroes_exactly(self):
    params = _params()
    m = pp.magnitude_masks(params, 0.5)
    pruned = pp.apply_masks(params, m)
    np.testing.assert_array_equal(np.asarray(pruned["a"]["w"])[~np.asarray(m["a"]["w"])], 0.0)
    np.testing.assert_array_equal(pruned["a"]["b"], params["a"]["b"])

  def test_errors(self):
    params = _params()
    for bad in [1.0, -0.1, 1.5, float("nan"), "x"]:
      with self.assertRaisesRegex(ValueError, "sparsity"):
        pp.magnitude_masks(params, bad)
    with self.assertRaisesRegex(ValueError, "scope"):
      pp.magnitude_masks(params, 0.5, "per-neuron")
    with self.assertRaisesRegex(ValueError, "does not match"):
      pp.apply_masks(params, {"a": {"w": jnp.ones((40, 30), bool)}})
    bad_shape = jax.tree_util.tree_map(lambda x: jnp.ones(x.shape, bool), params)
    bad_shape["a"]["w"] = jnp.ones((30, 40), bool)
    with self.assertRaisesRegex(ValueError, "shape"):
      pp.apply_masks(params, bad_shape)
    with self.assertRaisesRegex(ValueError, "no sparsity given"):
      pp.magnitude_masks(params, {"a": 0.5}, "layerwise")

  def test_ranking_by_v_equals_ranking_by_w(self):
    params = _params(3)
    for alpha in [2.0, 4.0]:
      v = pp.reparameterise_init(params, alpha)
      chex.assert_trees_all_equal(pp.magnitude_masks(v, 0.9),
                                  pp.magnitude_masks(pp.effective_params(v, alpha), 0.9))


class OneShotTest(chex.TestCase):

  def test_output_layer_keeps_twice(self):
    params = _params(4)
    m = curves.curve_masks(params, 0.1, "layerwise", output_multiplier=2.0)
    self.assertEqual(int(m["a"]["w"].sum()), 120)
    self.assertEqual(int(m["c"]["w"].sum()), 42)
    m = curves.curve_masks(params, 0.6, "layerwise", output_multiplier=2.0)
    self.assertTrue(bool(m["c"]["w"].all()))  # min(1, 2p)
    np.testing.assert_allclose(pp.keep_fractions(0.01, 20)[[0, 6, -1]],
                               [0.01, 0.0428133, 1.0], rtol=1e-5)


class MaskedOptimizerTest(chex.TestCase):

  def _mlp_setup(self):
    model = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([20, 5])(x)))
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 10))
    y = jnp.arange(64) % 5
    params = model.init(jax.random.PRNGKey(1), x)
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        model.apply(p, x), y).mean()
    return params, loss

  def test_pruned_weights_stay_zero_with_momentum(self):
    params, loss = self._mlp_setup()
    masks = pp.magnitude_masks(params, 0.8)
    for tx in [pp.masked_optimizer(optax.sgd(0.1, momentum=0.9), masks),
               pp.masked_optimizer(optax.adamw(1e-2, weight_decay=0.1), masks),
               pp.masked_optimizer(pp.powerprop_optimizer(optax.sgd(0.1, momentum=0.9), 3.0),
                                   masks)]:
      p = params  # not pre-pruned: the first step must zero the pruned entries
      state = tx.init(p)

      @jax.jit
      def step(p, state, tx=tx):
        u, state = tx.update(jax.grad(loss)(p), state, p)
        return optax.apply_updates(p, u), state

      start_loss = float(loss(pp.apply_masks(params, masks)))
      for _ in range(30):
        p, state = step(p, state)
        for leaf, m in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(masks)):
          np.testing.assert_array_equal(np.asarray(leaf)[~np.asarray(m)], 0.0)
      self.assertLess(float(loss(p)), start_loss)  # the kept weights did train
      self.assertEqual(pp.sparsity_of(jax.tree_util.tree_map(lambda x: x != 0, p)), 0.8)

  def test_masks_live_in_optimizer_state(self):
    params, _ = self._mlp_setup()
    masks = pp.magnitude_masks(params, 0.5)
    state = pp.masked_optimizer(optax.sgd(0.1), masks).init(params)
    chex.assert_trees_all_equal(pp.sparsity.find_sparse_state(state).masks, masks)
    fwd = pp.sparsity.forward_params(params, state)
    chex.assert_trees_all_equal(fwd, pp.apply_masks(params, masks))


def test_top_k_mask_equals_stable_argsort_with_ties_and_traced_k():
  """The radix search keeps the same set as argsort(-x, stable=True)[:k], for every k."""
  rng = np.random.default_rng(0)
  x = rng.choice(np.array([-np.inf, -2.0, -0.0, 0.0, 1e-30, 0.5, 0.5, 3.0, np.inf], np.float32),
                 size=57)
  x = np.concatenate([x, rng.normal(size=40).astype(np.float32)])
  traced = jax.jit(pp.top_k_mask)
  order = np.argsort(-x, kind="stable")
  for k in range(x.size + 1):
    expected = np.zeros(x.size, bool)
    expected[order[:k]] = True
    np.testing.assert_array_equal(np.asarray(traced(jnp.asarray(x), k)), expected, err_msg=k)
  np.testing.assert_array_equal(np.asarray(pp.top_k_mask(jnp.asarray(x).reshape(97, 1), 9)),
                                np.isin(np.arange(97), order[:9]).reshape(97, 1))


class LayerOrderTest(chex.TestCase):

  def test_output_layer_follows_creation_order_not_names(self):
    """Pytree order sorts linear_10 before linear_2; the creation order names the output."""
    rng = np.random.default_rng(0)
    params = {f"linear_{i}": {"w": jnp.asarray(rng.normal(size=(10, 10)), jnp.float32)}
              for i in (0, 2, 10)}
    order = ["linear_0", "linear_2", "linear_10"]
    m = curves.curve_masks(params, 0.1, "layerwise", 2.0, layer_order=order)
    self.assertEqual(int(m["linear_10"]["w"].sum()), 20)   # the output layer: 2p
    self.assertEqual(int(m["linear_2"]["w"].sum()), 10)
