"""The core on Flax params: linen dicts and nnx.State, with nnx.Optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import powerprop_jax as pp


class _Net(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(20, 32, rngs=rngs)
    self.out = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def _kernels(model):
  return [np.asarray(model.hidden.kernel[...]), np.asarray(model.out.kernel[...])]


def test_magnitude_masks_on_nnx_state_select_the_kernels():
  state = nnx.state(_Net(nnx.Rngs(0)), nnx.Param)
  masks = pp.magnitude_masks(state, 0.9)
  kept = sum(int(np.sum(m)) for _, n, m in pp.selected_leaves(masks) if n == "kernel")
  assert kept == round(0.1 * (20 * 32 + 32 * 10))
  assert pp.sparsity_of(masks) == pytest.approx(0.9, abs=1e-3)


@pytest.mark.parametrize("alpha", [1.0, 3.0])
def test_nnx_optimizer_with_fixed_masks_keeps_pruned_weights_at_zero(alpha):
  model = _Net(nnx.Rngs(0))
  masks = pp.magnitude_masks(nnx.state(model, nnx.Param), 0.8)
  opt = nnx.Optimizer(model, pp.masked_optimizer(
      pp.powerprop_optimizer(optax.sgd(0.1), alpha), masks), wrt=nnx.Param)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 20)), jnp.float32)
  y = jnp.arange(16) % 10

  @nnx.jit
  def step(model, opt):
    loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    value, grads = nnx.value_and_grad(loss)(model)
    opt.update(model, grads)
    return value

  losses = [float(step(model, opt)) for _ in range(20)]
  assert losses[-1] < losses[0]
  total = sum(k.size for k in _kernels(model))
  assert sum(int(np.count_nonzero(k)) for k in _kernels(model)) == round(0.2 * total)


def test_linen_optax_form_matches_manual_v_space_sgd():
  """linen params with powerprop_optimizer == SGD on v = inverse_powerprop(w), by hand."""
  import flax.linen as nn
  model = nn.Dense(4)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 6)), jnp.float32)
  w = model.init(jax.random.PRNGKey(0), x)
  loss = lambda p: jnp.sum(model.apply(p, x) ** 2)
  tx = pp.powerprop_optimizer(optax.sgd(0.05), 2.0)
  u, _ = tx.update(jax.grad(loss)(w), tx.init(w), w)
  got = optax.apply_updates(w, u)
  v = pp.reparameterise_init(w, 2.0)
  g_v = jax.grad(lambda v: loss(pp.effective_params(v, 2.0)))(v)
  want = pp.effective_params(jax.tree_util.tree_map(lambda a, g: a - 0.05 * g, v, g_v), 2.0)
  np.testing.assert_allclose(got["params"]["kernel"], want["params"]["kernel"], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(got["params"]["bias"], want["params"]["bias"], rtol=1e-5)


def test_predicate_selecting_nothing_raises():
  state = nnx.state(_Net(nnx.Rngs(0)), nnx.Param)
  with pytest.raises(ValueError, match="selects no parameter"):
    pp.magnitude_masks(state, 0.5, predicate=lambda m, n, s: n == "w")
  with pytest.raises(ValueError, match="selects no parameter"):
    pp.powerprop_optimizer(optax.sgd(0.1), 2.0, lambda m, n, s: False).init(state)
