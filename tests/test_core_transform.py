"""The Powerpropagation transform: identities, exact inverse, gradients, init, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import powerprop_jax as pp

ALPHAS = [1.0, 1.5, 2.0, 3.0, 4.0, 5.0]


def _explicit(v, alpha):
  """Reference w = sign(v) |v|^alpha, away from 0."""
  return jnp.sign(v) * jnp.abs(v) ** alpha


class TransformTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_values_match_definition(self):
    v = jnp.asarray(np.random.default_rng(0).normal(size=(64,)), jnp.float32)
    for alpha in ALPHAS:
      w = self.variant(lambda x, a=alpha: pp.powerprop(x, a))(v)
      chex.assert_trees_all_close(w, v * jnp.abs(v) ** (alpha - 1), rtol=1e-6)

  def test_alpha_one_is_identity(self):
    v = jnp.asarray([-2.0, -0.0, 0.0, 1e-30, 3.0])
    self.assertIs(pp.powerprop(v, 1.0), v)
    g = jax.grad(lambda x: jnp.sum(pp.powerprop(x, 1.0)))(v)
    np.testing.assert_array_equal(g, np.ones(5))

  def test_exact_inverse(self):
    v = jnp.asarray(np.random.default_rng(1).normal(size=(1000,)), jnp.float32)
    for alpha in ALPHAS:
      chex.assert_trees_all_close(pp.inverse_powerprop(pp.powerprop(v, alpha), alpha), v,
                                  rtol=2e-6, atol=1e-7)
      chex.assert_trees_all_close(pp.powerprop(pp.inverse_powerprop(v, alpha), alpha), v,
                                  rtol=2e-6, atol=1e-7)

  def test_sign_preserved_and_monotone(self):
    v = jnp.linspace(-2.0, 2.0, 400)  # no entry within 5e-3 of 0
    for alpha in ALPHAS:
      w = pp.powerprop(v, alpha)
      np.testing.assert_array_equal(np.sign(w), np.sign(v))
      self.assertTrue(bool(jnp.all(jnp.diff(w) >= 0)))

  def test_gradient_matches_explicit_formula(self):
    v = jnp.asarray(np.random.default_rng(2).normal(size=(50,)), jnp.float32)
    for alpha in ALPHAS:
      loss = lambda w: jnp.sum(jnp.arange(50.0) * w + 0.01 * w**2)  # noqa: E731
      got = jax.grad(lambda x: loss(pp.powerprop(x, alpha)))(v)
      want = jax.grad(lambda x: loss(_explicit(x, alpha)))(v)
      chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
      chex.assert_trees_all_close(pp.powerprop_derivative(v, alpha),
                                  alpha * jnp.abs(v) ** (alpha - 1), rtol=1e-6)

  def test_gradient_matches_finite_differences(self):
    v = jnp.asarray([-0.7, -0.2, 0.3, 1.1], jnp.float64 if jax.config.x64_enabled
                    else jnp.float32)
    for alpha in [1.5, 2.0, 4.0]:
      eps = 1e-3
      fd = (pp.powerprop(v + eps, alpha) - pp.powerprop(v - eps, alpha)) / (2 * eps)
      g = jax.vmap(jax.grad(lambda x: pp.powerprop(x, alpha)))(v)
      chex.assert_trees_all_close(g, fd, rtol=2e-3)

  def test_no_nan_gradient_at_zero(self):
    for alpha in ALPHAS:
      g = jax.grad(lambda x: jnp.sum(pp.powerprop(x, alpha)))(jnp.zeros(3))
      self.assertTrue(bool(jnp.all(jnp.isfinite(g))), msg=f"alpha={alpha}: {g}")
      want = 1.0 if alpha == 1.0 else 0.0
      np.testing.assert_array_equal(g, np.full(3, want))

  def test_zero_is_a_fixed_point_for_alpha_above_one(self):
    # PAPER.md section 1: dw/dv = 0 at v = 0, so SGD never moves a weight that is exactly 0.
    v = jnp.asarray([0.0, 0.5])
    g = jax.grad(lambda x: jnp.sum(3.0 * pp.powerprop(x, 2.0)))(v)
    self.assertEqual(float(g[0]), 0.0)
    self.assertNotEqual(float(g[1]), 0.0)

  def test_float32_compute_for_low_precision_inputs(self):
    v = jnp.asarray([1e-3, -2e-3], jnp.float16)
    w = pp.powerprop(v, 4.0)
    self.assertEqual(w.dtype, jnp.float16)
    # |v|^4 = 1e-12 underflows fp16; the float32 path returns the correctly rounded 0 with no
    # NaN, and the bf16 path keeps the value (bf16 has float32's exponent range).
    self.assertTrue(bool(jnp.all(jnp.isfinite(w))))
    wb = pp.powerprop(jnp.asarray([1e-3], jnp.bfloat16), 4.0)
    self.assertEqual(wb.dtype, jnp.bfloat16)
    np.testing.assert_allclose(float(wb[0]), 1e-12, rtol=1e-2)

  def test_bad_alpha_raises(self):
    for bad in [0.5, 0.0, -1.0, float("nan"), float("inf"), "two", None]:
      with self.assertRaisesRegex(ValueError, "alpha"):
        pp.powerprop(jnp.ones(2), bad)
      with self.assertRaisesRegex(ValueError, "alpha"):
        pp.effective_params({"w": jnp.ones((2, 2))}, bad)

  def test_effective_params_selects_weights_only(self):
    params = {"linear": {"w": jnp.full((3, 2), 0.5), "b": jnp.full((2,), 0.5)},
              "batch_norm": {"scale": jnp.full((2,), 0.5), "offset": jnp.full((2,), 0.5)},
              "conv": {"w": jnp.full((3, 3, 1, 2), -0.5)}}
    out = pp.effective_params(params, 2.0)
    np.testing.assert_allclose(out["linear"]["w"], 0.25)
    np.testing.assert_allclose(out["conv"]["w"], -0.25)
    np.testing.assert_allclose(out["linear"]["b"], 0.5)
    np.testing.assert_allclose(out["batch_norm"]["scale"], 0.5)
    np.testing.assert_allclose(out["batch_norm"]["offset"], 0.5)
    only_linear = pp.effective_params(params, 2.0, lambda m, n, s: m == "linear")
    np.testing.assert_allclose(only_linear["linear"]["b"], 0.25)
    np.testing.assert_allclose(only_linear["conv"]["w"], -0.5)

  def test_reparameterise_init_preserves_effective_weights(self):
    u = {"l": {"w": jnp.asarray(np.random.default_rng(3).normal(size=(20, 5)), jnp.float32),
               "b": jnp.ones((5,))}}
    for alpha in ALPHAS:
      v = pp.reparameterise_init(u, alpha)
      chex.assert_trees_all_close(pp.effective_params(v, alpha), u, rtol=2e-6, atol=1e-7)


def test_zero_initialised_weights_are_refused_for_alpha_above_one():
  """v = 0 is a fixed point: a zero-initialised layer (hk.nets.ResNet's default logits) would
  never train, so building an experiment with one raises; alpha = 1 is fine."""
  params = {"conv": {"w": jnp.ones((3, 3)), "b": jnp.zeros(3)}, "logits": {"w": jnp.zeros((3, 2))}}
  pp.transform.check_no_zero_init(params, 1.0)
  pp.transform.check_no_zero_init({"conv": params["conv"]}, 4.0)  # zero biases are fine
  with pytest.raises(ValueError, match=r"logits/w"):
    pp.transform.check_no_zero_init(params, 2.0)
  g = jax.grad(lambda v: jnp.sum(pp.powerprop(v, 2.0)))(params["logits"]["w"])
  np.testing.assert_array_equal(g, 0.0)
