"""Fidelity to the published algorithms (PAPER.md): each test pins one rule so that a
plausible wrong implementation of it fails. Expected values come from formulas written here,
never from the library's own helpers."""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import powerprop_jax as pp
from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import models, train
from powerprop_jax.sparsity import builders, distributions, schedules

# ---------------------------------------------------------------------------------------------
# ERK: density_l proportional to (sum of ALL dims) / (product of all dims), 4-D kernels too.


def test_erk_uses_every_kernel_dimension():
  shapes = {"conv": (3, 3, 16, 32), "fc": (512, 64), "out": (64, 10)}
  params = {k: {"w": jnp.zeros(s, jnp.float32), "b": jnp.zeros(s[-1:], jnp.float32)}
            for k, s in shapes.items()}
  sparsity = 0.9
  n = {k: int(np.prod(s)) for k, s in shapes.items()}
  raw = {k: sum(s) / np.prod(s) for k, s in shapes.items()}  # conv: (3+3+16+32)/(3*3*16*32)
  eps = (1 - sparsity) * sum(n.values()) / sum(raw[k] * n[k] for k in shapes)
  want = {k: eps * raw[k] for k in shapes}
  assert max(want.values()) < 1.0  # no layer is made dense at this level
  got = distributions.erk_densities(pp.layer_shapes(params), sparsity)
  np.testing.assert_allclose([got[k] for k in shapes], [want[k] for k in shapes], rtol=1e-9)
  counts = distributions.keep_counts(params, sparsity, "erk")
  assert sum(counts.values()) == round((1 - sparsity) * sum(n.values()))
  for k in shapes:
    assert abs(counts[k] - want[k] * n[k]) <= 1.0, k


# ---------------------------------------------------------------------------------------------
# Gradual magnitude pruning: cubic schedule, final sparsity from end_step on.


def _gradual_counts(n: int, final_kept: int, begin: int, end: int, every: int, steps: int):
  """Active count after each step 0..steps of gradual pruning on one (n,) layer."""
  v = jnp.asarray(np.random.default_rng(0).permutation(n) + 1.0, jnp.float32).reshape(n // 10,
                                                                                       10)
  params = {"l": {"w": v}}
  method = pp.sparsity.gradual_pruning({"l": {"w": final_kept}}, begin, end, every)
  start = method.init(params)

  @jax.jit
  def run(masks, state):
    def body(carry, step):
      m, s = carry
      out = method.update(params, params, m, m, s, step)
      return (out.masks, out.state), out.masks["l"]["w"].sum()
    return jax.lax.scan(body, (masks, state), jnp.arange(1, steps + 1))[1]

  return [int(start.masks["l"]["w"].sum())] + [int(c) for c in run(start.masks, start.state)]


def test_gradual_cubic_schedule_and_final_sparsity_at_end_step():
  n, final = 1000, 0.9
  begin, end, every = 0, 250, 100
  counts = _gradual_counts(n, round((1 - final) * n), begin, end, every, 300)

  def s(t):  # Zhu & Gupta (2017), exponent 3
    return final + (0.0 - final) * (1 - (t - begin) / (end - begin)) ** 3

  updates = [0, 100, 200, 250]
  for t, c in enumerate(counts):
    last = max(u for u in updates if u <= t)
    assert c == round((1 - s(last)) * n), (t, c)
  assert counts[end] == 100 and counts[-1] == 100  # exactly the final sparsity from end_step on
  assert counts[100] == round((1 - final * (1 - 0.6 ** 3)) * n) == 294
  # the jittable schedule itself, against the formula
  for t in [0, 50, 100, 125, 200, 249, 250, 400]:
    want = s(min(t, end))
    np.testing.assert_allclose(float(schedules.cubic_sparsity(t, final, begin, end)), want,
                               rtol=1e-6, atol=1e-7)


def test_gradual_end_step_on_the_grid_unchanged():
  counts = _gradual_counts(1000, 100, 10, 50, 20, 60)
  s = lambda t: 0.9 * (1 - (1 - (t - 10) / 40) ** 3)  # noqa: E731
  for t, c in enumerate(counts):
    last = max([u for u in (10, 30, 50) if u <= t], default=None)
    assert c == (1000 if last is None else round((1 - s(last)) * 1000)), (t, c)


# ---------------------------------------------------------------------------------------------
# RigL: drop the smallest |w| among active, grow the largest |dL/dw| among the non-kept;
# only weights inactive before the update are re-initialised.

# One layer of 12 weights, 6 active (indices 0..5), 2 dropped per update.
_W = np.array([0.9, 0.05, 0.6, 0.01, 0.5, 0.7, 0, 0, 0, 0, 0, 0], np.float32).reshape(2, 6)
_G = np.array([0.0, 5.0, 0.0, 0.1, 3.0, 0.0, 0.2, 0.0, 0.0, 0.0, 4.0, 0.3],
              np.float32).reshape(2, 6)
# drop by |w|: 3 (0.01) and 1 (0.05); grow by |g| among the rest: 1 (5.0, regrown) and 10 (4.0)
# (dropping by |g| would drop 0 and 2; growing by |w| would grow 1 and 3).
_WANT_MASK = np.isin(np.arange(12), [0, 1, 2, 4, 5, 10]).reshape(2, 6)


def _rigl_update(grow_init: str, alpha: float, w=_W):
  method = pp.sparsity.rigl({"l": {"w": 6}}, drop_fraction=0.4, update_every=1,
                            end_step=10**6, grow_init=grow_init, alpha=alpha)
  masks = {"l": {"w": jnp.asarray(w != 0)}}
  assert int(np.floor(float(schedules.cosine_drop_fraction(1, 0.4, 10**6)) * 6)) == 2
  return method.update({"l": {"w": jnp.asarray(w)}}, {"l": {"w": jnp.asarray(_G)}}, masks,
                       masks, jax.random.PRNGKey(0), jnp.asarray(1))


@pytest.mark.parametrize("grow_init,alpha,new_value", [
    ("zero", 1.0, 0.0),
    ("min_active", 2.0, -0.5),       # -sign(g) * smallest kept |v| (0.5)
    ("w_epsilon", 2.0, -1e-3 ** 0.5),
    ("auto", 1.0, 0.0),
    ("auto", 4.0, -0.5),
])
def test_rigl_drops_by_weight_grows_by_gradient_and_keeps_regrown(grow_init, alpha,
                                                                   new_value):
  out = _rigl_update(grow_init, alpha)
  mask = np.asarray(out.masks["l"]["w"])
  np.testing.assert_array_equal(mask, _WANT_MASK)
  np.testing.assert_array_equal(np.asarray(out.grad_masks["l"]["w"]), _WANT_MASK)
  w = np.asarray(out.params["l"]["w"]).ravel()
  # index 1 was active, dropped and regrown in the same update: keeps its value (RigL's
  # reference re-initialises only connections that were inactive before the update).
  assert w[1] == np.float32(0.05)
  np.testing.assert_allclose(w[10], new_value, rtol=1e-6)  # newly active: grow_init value
  np.testing.assert_array_equal(w[[0, 2, 4, 5]], _W.ravel()[[0, 2, 4, 5]])  # kept: unchanged
  np.testing.assert_array_equal(w[~_WANT_MASK.ravel()], 0.0)


def test_rigl_regrown_weight_keeps_momentum_through_the_optimizer():
  lr, beta = 1e-3, 0.9
  method = pp.sparsity.rigl({"l": {"w": 6}}, 0.4, 1, 10**6)
  tx = pp.sparse_optimizer(optax.sgd(lr, momentum=beta), method)
  params = {"l": {"w": jnp.asarray(_W)}}
  state = tx.init(params)
  masks = {"l": {"w": jnp.asarray(_W != 0)}}
  inner = jax.tree_util.tree_map(lambda x: jnp.ones_like(x) if x.dtype == jnp.float32 else x,
                                 state.inner_state)
  state = state._replace(inner_state=inner, masks=masks, grad_masks=masks)
  grads = {"l": {"w": jnp.asarray(_G)}}
  u, new_state = jax.jit(lambda g, s, p: tx.update(g, s, p, dense_grads=g))(grads, state,
                                                                           params)
  np.testing.assert_array_equal(np.asarray(new_state.masks["l"]["w"]), _WANT_MASK)
  trace = np.asarray(jax.tree_util.tree_leaves(new_state.inner_state)[0]).ravel()
  w = np.asarray(optax.apply_updates(params, u)["l"]["w"]).ravel()
  g = _G.ravel()
  # regrown index 1: momentum 0.9 * 1 + g, and its value after the SGD step is kept
  np.testing.assert_allclose(trace[1], beta + g[1], rtol=1e-6)
  np.testing.assert_allclose(w[1], _W.ravel()[1] - lr * (beta + g[1]), rtol=1e-6)
  # newly grown index 10: momentum reset, value 0 (alpha 1)
  assert trace[10] == 0.0 and w[10] == 0.0
  # kept index 0: momentum and SGD step as usual
  np.testing.assert_allclose(trace[0], beta + g[0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# SET grows at random.


def test_set_grows_at_random_positions():
  n, active = 400, 100
  rng = np.random.default_rng(0)
  w = np.zeros(n, np.float32)
  w[:active] = rng.uniform(0.1, 1.0, active)  # active are the lowest indices
  w = w.reshape(20, 20)
  masks = {"l": {"w": jnp.asarray(w != 0)}}
  method = pp.sparsity.set_method({"l": {"w": active}}, 0.25, 1, 10**6)
  update = jax.jit(method.update)
  grown = []
  for seed in range(3):
    key = jax.random.PRNGKey(seed)  # the method's state: its PRNG key
    out = update({"l": {"w": jnp.asarray(w)}}, {"l": {"w": jnp.ones_like(w)}}, masks, masks,
                 key, jnp.asarray(1))
    m = np.asarray(out.masks["l"]["w"]).ravel()
    assert m.sum() == active
    kept = np.zeros(n, bool)
    kept[np.argsort(-np.abs(w.ravel()))[:active - 25]] = True  # drop 0.25 * 100
    assert np.all(m[kept])
    new = np.flatnonzero(m & ~kept)  # grown among the 325 not kept
    assert len(new) == 25
    grown.append(tuple(new))
  assert len(set(grown)) == 3  # different seeds grow different weights
  # not the lowest indices of the candidates, and spread over the inactive range
  assert all(max(g) > n - 100 for g in grown)
  assert all(active + 60 < np.mean(g) < n - 60 for g in grown)


# ---------------------------------------------------------------------------------------------
# Direct API: rigl/set_method default to the safe grow rule ("auto").


@pytest.mark.parametrize("make", [pp.sparsity.rigl, pp.sparsity.set_method])
def test_direct_api_grows_off_zero_for_alpha_above_one(make):
  method = make({"l": {"w": 6}}, 0.4, 1, 10**6, alpha=4.0)
  masks = {"l": {"w": jnp.asarray(_W != 0)}}
  state = method.init({"l": {"w": jnp.asarray(_W)}}).state
  out = method.update({"l": {"w": jnp.asarray(_W)}}, {"l": {"w": jnp.asarray(_G)}}, masks,
                      masks, state, jnp.asarray(1))
  m = np.asarray(out.masks["l"]["w"])
  new = m & (_W == 0)
  assert new.sum() >= 1
  w = np.asarray(out.params["l"]["w"])
  assert np.all(w[new] != 0.0)  # a weight grown at v = 0 would never move for alpha > 1
  assert np.all(w[m] != 0.0)


def test_grow_init_auto_accepted_and_validated():
  pp.sparsity.drop_and_grow({"l": {"w": 6}}, 0.3, 1, 10, grow_init="auto", alpha=2.0)
  with pytest.raises(ValueError, match="grow_init"):
    pp.sparsity.drop_and_grow({"l": {"w": 6}}, 0.3, 1, 10, grow_init="ones")


# ---------------------------------------------------------------------------------------------
# Top-KAST through the training step.


@pytest.mark.parametrize("level,backward", [
    (0.8, 0.5), (0.9, 0.8), (0.95, 0.9), (0.98, 0.96)])
def test_topkast_backward_level_paper_pairs(level, backward):
  """Top-KAST's published (forward, backward) sparsities: 80/50, 90/80, 95/90 %."""
  assert builders.topkast_backward_level(level) == pytest.approx(backward)


def test_topkast_backward_level_is_the_default():
  params = {"l0": {"w": jnp.ones((50, 40))}, "l1": {"w": jnp.ones((40, 30))}}
  c = config_lib.base().sparsity
  c.method, c.level = "topkast", 0.9
  assert c.backward_level < 0  # the default: the paper's pairing
  start = jax.jit(builders.build_method(c, params, 100, 1.0).init)(params)
  for k in params:
    n = params[k]["w"].size
    assert int(start.masks[k]["w"].sum()) == round(0.1 * n)
    assert int(start.grad_masks[k]["w"].sum()) == round(0.2 * n)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_topkast_loss_gradient_reaches_backward_set_through_train_step(weight_decay):
  """Top-KAST's update on a sparse layer, and with ``optimizer.weight_decay`` = lambda the same
  update: the exploration penalty is the weight decay of the sparse layers (not added to it),
  while the parameters Top-KAST leaves dense (biases) keep the ordinary weight decay."""
  config = config_lib.base()
  config.alpha = 2.0
  config.model.name = "lenet_300_100"
  config.train.steps = 10
  config.sparsity.method = "topkast"
  config.sparsity.level = 0.9          # backward 0.8 (2 * level - 1)
  config.sparsity.penalty = 1e-2
  config.optimizer.weight_decay = weight_decay
  lr, lam = config.optimizer.learning_rate, config.sparsity.penalty
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(16, 28, 28, 1)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}
  exp = train.build_experiment(config, np.asarray(batch["image"][:1]))
  state = exp.init_state
  sparse = pp.sparsity.find_sparse_state(state.opt_state)
  new_state, _ = jax.jit(train.make_train_step(exp.model, exp.tx, exp.reparam))(state, batch)

  # the loss gradient w.r.t. the sparse forward weights w = A * v|v|, computed here
  def loss(w):
    logits, _ = exp.model.apply(w, state.net_state, None, batch["image"], is_training=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
  w = jax.tree_util.tree_map(lambda v, a: jnp.where(a, v * jnp.abs(v), 0.0)
                             if v.ndim == 2 else v, state.params, sparse.masks)
  g_w = jax.jit(jax.grad(loss))(w)
  name = "mlp/~/linear_1"
  v0 = np.asarray(state.params[name]["w"])
  v1 = np.asarray(new_state.params[name]["w"])
  a = np.asarray(sparse.masks[name]["w"])
  b = np.asarray(sparse.grad_masks[name]["w"])
  assert a.sum() == round(0.1 * a.size) and b.sum() == round(0.2 * b.size)
  b_minus_a = b & ~a
  density = a.sum() / a.size
  penalty_only = v0 - lr * lam / density * v0
  g_v = np.asarray(g_w[name]["w"]) * 2.0 * np.abs(v0)
  expected = penalty_only - lr * g_v
  # B \ A moves by the loss gradient as well as the penalty (a hidden unit with no active
  # outgoing weight in A gets no gradient, hence only entries with g_w != 0) ...
  has_grad = b_minus_a & (np.asarray(g_w[name]["w"]) != 0)
  assert has_grad.sum() > 0.5 * b_minus_a.sum()
  moved = np.abs(v1 - penalty_only) > 1e-3 * np.abs(lr * g_v)
  assert moved[has_grad].mean() > 0.99
  np.testing.assert_allclose(v1[b_minus_a], expected[b_minus_a], rtol=1e-4, atol=1e-7)
  # ... A by the gradient and lambda * v, and nothing outside B moves.
  np.testing.assert_allclose(v1[a], (v0 - lr * (g_v + lam * v0))[a], rtol=1e-4, atol=1e-7)
  np.testing.assert_array_equal(v1[~b], v0[~b])
  # Weight decay where Top-KAST does not act: every bias, and no kernel.
  decay = builders.weight_decay_mask(config.sparsity, state.params)
  assert all(decay[k]["b"] and not decay[k]["w"] for k in decay)


# ---------------------------------------------------------------------------------------------
# The reparameterisation's custom JVP and the initialiser.


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 3.0, 4.0])
def test_powerprop_gradient_matches_closed_form_and_finite_differences(alpha):
  v = np.array([-1.7, -0.6, -0.05, 0.3, 0.8, 2.5], np.float64)
  grad = jax.vmap(jax.grad(lambda x: pp.powerprop(x, alpha)))(jnp.asarray(v, jnp.float32))
  np.testing.assert_allclose(grad, alpha * np.abs(v) ** (alpha - 1), rtol=1e-5)
  h = 1e-3
  f = lambda x: np.sign(x) * np.abs(x) ** alpha  # noqa: E731
  np.testing.assert_allclose(grad, (f(v + h) - f(v - h)) / (2 * h), rtol=2e-3)
  # and the derivative helper agrees; finite (alpha at 1, 0 above) at v = 0
  np.testing.assert_allclose(pp.powerprop_derivative(jnp.asarray(v, jnp.float32), alpha),
                             alpha * np.abs(v) ** (alpha - 1), rtol=1e-5)
  g0 = float(jax.grad(lambda x: pp.powerprop(x, alpha))(0.0))
  assert g0 == (1.0 if alpha == 1.0 else 0.0)


def _init(name: str, x: jax.Array, **kwargs) -> dict:
  model = models.get_model(name, **kwargs)
  return jax.jit(lambda k: model.init(k, x, is_training=True)[0])(jax.random.PRNGKey(0))


def test_linear_init_spread_is_one_over_sqrt_fan_in():
  """The official initialiser: truncated normal with actual std 1/sqrt(fan_in) (Haiku's
  default TruncatedNormal(1/sqrt(fan_in)) has std 0.88/sqrt(fan_in))."""
  w = np.asarray(_init("lenet_300_100", jnp.zeros((1, 784)))["mlp/~/linear_0"]["w"])
  assert w.shape == (784, 300)
  np.testing.assert_allclose(w.std(), 1 / np.sqrt(784), rtol=0.02)
  assert np.abs(w).max() <= 2 / np.sqrt(784) / 0.8796 + 1e-6  # truncated at 2 stddev
  # cifar_convnet's dense layers use the same initialiser (checked without compiling)
  inits = {}

  def record(next_creator, shape, dtype, init, context):
    inits[context.full_name] = init
    return next_creator(shape, dtype, init)

  def traced(x):
    with hk.custom_creator(record):
      return models.cifar_convnet(x, True, width=0.25)

  jax.eval_shape(hk.transform_with_state(traced).init, jax.random.PRNGKey(0),
                 jnp.zeros((1, 32, 32, 3)))
  dense = [v for k, v in inits.items() if k.startswith("mlp/") and k.endswith("/w")]
  assert len(dense) == 3
  for init in dense:
    assert isinstance(init, hk.initializers.VarianceScaling)
    assert (init.scale, init.mode, init.distribution) == (1.0, "fan_in", "truncated_normal")
