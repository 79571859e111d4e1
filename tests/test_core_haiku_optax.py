"""The Haiku form and the optax form: same model, same init, same training trajectory."""

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

import powerprop_jax as pp


def _mlp(x):
  return hk.nets.MLP([32, 16, 10])(x)


def _pp_mlp(alpha):
  def f(x):
    with pp.haiku.powerprop(alpha):
      return _mlp(x)
  return f


class MyModule(hk.Module):
  """A user's own module with a custom parameter name."""

  def __call__(self, x):
    kernel = hk.get_parameter("kernel", [x.shape[-1], 4], init=hk.initializers.RandomNormal())
    gain = hk.get_parameter("gain", [4], init=jnp.ones)
    return (x @ kernel) * gain


class HaikuFormTest(chex.TestCase):

  def test_init_effective_weights_equal_standard_init(self):
    x = jnp.ones((2, 8))
    plain = hk.without_apply_rng(hk.transform(_mlp))
    u = plain.init(jax.random.PRNGKey(0), x)
    for alpha in [1.0, 2.0, 4.0]:
      model = hk.without_apply_rng(hk.transform(_pp_mlp(alpha)))
      v = model.init(jax.random.PRNGKey(0), x)
      chex.assert_trees_all_close(pp.effective_params(v, alpha), u, rtol=2e-6, atol=1e-7)
      # biases are stored untouched, weights as v = sign(u)|u|^(1/alpha)
      chex.assert_trees_all_equal(v["mlp/~/linear_0"]["b"], u["mlp/~/linear_0"]["b"])
      chex.assert_trees_all_close(v["mlp/~/linear_0"]["w"],
                                  pp.inverse_powerprop(u["mlp/~/linear_0"]["w"], alpha))

  def test_init_distribution_matches_haiku_default(self):
    model = hk.without_apply_rng(hk.transform(_pp_mlp(4.0)))
    v = model.init(jax.random.PRNGKey(1), jnp.ones((1, 784)))
    w = np.asarray(pp.powerprop(v["mlp/~/linear_0"]["w"], 4.0))
    # Haiku's default: truncated normal, stddev 1/sqrt(fan_in), truncated at 2 stddev.
    std = 1 / np.sqrt(784)
    self.assertLessEqual(np.abs(w).max(), 2 * std / 0.87962566 + 1e-6)
    np.testing.assert_allclose(w.std(), 0.8796 * std, rtol=0.02)  # std of the truncated normal

  def test_apply_equals_plain_model_on_effective_weights(self):
    x = jax.random.normal(jax.random.PRNGKey(2), (5, 8))
    plain = hk.without_apply_rng(hk.transform(_mlp))
    model = hk.without_apply_rng(hk.transform(_pp_mlp(3.0)))
    v = model.init(jax.random.PRNGKey(3), x)
    chex.assert_trees_all_close(model.apply(v, x),
                                plain.apply(pp.effective_params(v, 3.0), x), rtol=1e-6)

  def test_resnet_batchnorm_scales_left_alone(self):
    def net(x, is_training):
      with pp.haiku.powerprop(2.0):
        return hk.nets.ResNet18(10, resnet_v2=True)(x, is_training)
    def plain_net(x, is_training):
      return hk.nets.ResNet18(10, resnet_v2=True)(x, is_training)
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 32, 32, 3))
    model = hk.transform_with_state(net)
    v, state = model.init(jax.random.PRNGKey(5), x, True)
    for path, leaf in jax.tree_util.tree_flatten_with_path(v)[0]:
      name = jax.tree_util.keystr(path)
      if "batchnorm" in name:
        self.assertTrue(name.endswith("['scale']") or name.endswith("['offset']"))
        np.testing.assert_array_equal(leaf, 1.0 if name.endswith("['scale']") else 0.0)
    out, _ = model.apply(v, state, None, x, False)
    plain = hk.transform_with_state(plain_net)
    ref, _ = plain.apply(pp.effective_params(v, 2.0), state, None, x, False)
    chex.assert_trees_all_close(out, ref, rtol=1e-5, atol=1e-5)

  def test_predicate_on_user_module(self):
    def f(x):
      with pp.haiku.powerprop(2.0, predicate=lambda m, n, s: n in ("kernel", "gain")):
        return MyModule()(x)
    model = hk.without_apply_rng(hk.transform(f))
    v = model.init(jax.random.PRNGKey(6), jnp.ones((1, 3)))
    np.testing.assert_allclose(v["my_module"]["gain"], 1.0)  # sqrt(1) = 1 stored
    v = jax.tree_util.tree_map(lambda a: a * 0 + 0.5, v)
    out = model.apply(v, jnp.ones((1, 3)))
    np.testing.assert_allclose(out, 3 * 0.25 * 0.25)

  def test_bad_alpha(self):
    with self.assertRaisesRegex(ValueError, "alpha"):
      with pp.haiku.powerprop(0.9):
        pass


def _data(n=256, d=8, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (x[:, 0] + x[:, 1] > 0).astype(np.int32) + 2 * (x[:, 2] > 0)
  return jnp.asarray(x), jnp.asarray(y)


def _loss(apply, params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()


class OptaxFormTest(chex.TestCase):

  def _trajectories(self, alpha, inner_fn, steps=200):
    x, y = _data()
    plain = hk.without_apply_rng(hk.transform(_mlp))
    haiku_model = hk.without_apply_rng(hk.transform(_pp_mlp(alpha)))
    v = haiku_model.init(jax.random.PRNGKey(0), x)
    w = plain.init(jax.random.PRNGKey(0), x)

    tx_v = inner_fn()
    tx_w = pp.powerprop_optimizer(inner_fn(), alpha)

    @jax.jit
    def step_v(v, s, xb, yb):
      g = jax.grad(lambda p: _loss(haiku_model.apply, p, xb, yb))(v)
      u, s = tx_v.update(g, s, v)
      return optax.apply_updates(v, u), s

    @jax.jit
    def step_w(w, s, xb, yb):
      g = jax.grad(lambda p: _loss(plain.apply, p, xb, yb))(w)
      u, s = tx_w.update(g, s, w)
      return optax.apply_updates(w, u), s

    s_v, s_w = tx_v.init(v), tx_w.init(w)
    for t in range(steps):
      sl = slice((t * 32) % 256, (t * 32) % 256 + 32)
      v, s_v = step_v(v, s_v, x[sl], y[sl])
      w, s_w = step_w(w, s_w, x[sl], y[sl])
    return pp.effective_params(v, alpha), w

  def test_same_trajectory_as_haiku_form_sgd(self):
    # 200 steps; a stable learning rate, since in an unstable regime float32 rounding
    # differences (inverse_powerprop each step) are amplified chaotically.
    for alpha in [1.0, 2.0, 4.0]:
      w_haiku, w_optax = self._trajectories(alpha, lambda: optax.sgd(0.03))
      chex.assert_trees_all_close(w_haiku, w_optax, rtol=1e-4, atol=1e-5)

  def test_same_trajectory_with_momentum_and_weight_decay(self):
    inner = lambda: optax.chain(optax.add_decayed_weights(1e-3),  # noqa: E731
                                optax.sgd(0.005, momentum=0.9))
    w_haiku, w_optax = self._trajectories(3.0, inner)
    chex.assert_trees_all_close(w_haiku, w_optax, rtol=1e-4, atol=1e-5)

  def test_trajectory_differs_from_plain_sgd(self):
    # The wrapper must actually change the dynamics for alpha > 1.
    w_pp, _ = self._trajectories(4.0, lambda: optax.sgd(0.1), steps=50)
    w_plain, _ = self._trajectories(1.0, lambda: optax.sgd(0.1), steps=50)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree_util.tree_leaves(w_pp), jax.tree_util.tree_leaves(w_plain)))
    self.assertGreater(diff, 1e-2)

  def test_update_scaling_is_alpha_v_power(self):
    # One SGD step in v-space: w' = powerprop(v - lr * g_w * alpha |v|^(alpha-1)).
    w = {"l": {"w": jnp.asarray([[0.5, -0.2], [0.0, 1.5]])}}
    g = {"l": {"w": jnp.asarray([[1.0, 1.0], [1.0, -2.0]])}}
    alpha, lr = 2.0, 0.1
    tx = pp.powerprop_optimizer(optax.sgd(lr), alpha)
    u, _ = tx.update(g, tx.init(w), w)
    v = pp.inverse_powerprop(w["l"]["w"], alpha)
    want = pp.powerprop(v - lr * g["l"]["w"] * alpha * jnp.abs(v), alpha)
    chex.assert_trees_all_close(optax.apply_updates(w, u)["l"]["w"], want, rtol=1e-6)
    self.assertEqual(float(optax.apply_updates(w, u)["l"]["w"][1, 0]), 0.0)  # 0 stays 0

  def test_needs_params(self):
    tx = pp.powerprop_optimizer(optax.sgd(0.1), 2.0)
    w = {"l": {"w": jnp.ones((2, 2))}}
    with self.assertRaisesRegex(ValueError, "params"):
      tx.update(w, tx.init(w))
