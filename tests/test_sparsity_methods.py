"""Sparse-training methods: distributions, schedules, exact counts, masks through steps, jit."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import powerprop_jax as pp
from powerprop_jax.experiment import checkpoint
from powerprop_jax.experiment import config as config_lib
from powerprop_jax.sparsity import builders, distributions, schedules


def _params(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"l0": (50, 40), "l1": (40, 30), "l2": (30, 10)}
  params = {}
  for name, shape in shapes.items():
    params[name] = {"w": jnp.asarray(rng.normal(size=shape), jnp.float32),
                    "b": jnp.asarray(rng.normal(size=shape[1:]), jnp.float32)}
  return params


def _n_active(masks, params):
  return {k: int(masks[k]["w"].sum()) for k in params}


def _config(**kw):
  c = config_lib.base().sparsity
  c.update(kw)
  return c


class DistributionTest(chex.TestCase):

  def test_uniform_exact_per_layer(self):
    counts = distributions.keep_counts(_params(), 0.9, "uniform")
    self.assertEqual(counts, {"l0": 200, "l1": 120, "l2": 30})
    counts = distributions.keep_counts(_params(), 0.9, "uniform", "first,last")
    self.assertEqual(counts, {"l0": 2000, "l1": 120, "l2": 300})

  def test_erk_total_exact_and_formula(self):
    params = _params()
    n_total = 2000 + 1200 + 300
    for level in [0.5, 0.8, 0.9, 0.95]:
      counts = distributions.keep_counts(params, level, "erk")
      self.assertEqual(sum(counts.values()), round((1 - level) * n_total))
      dens = distributions.erk_densities(pp.layer_shapes(params), level)
      raw = {"l0": 90 / 2000, "l1": 70 / 1200, "l2": 40 / 300}
      sparse_layers = [n for n in dens if dens[n] < 1.0]
      ratios = [dens[n] / raw[n] for n in sparse_layers]
      np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)  # density ∝ sum/prod
      for n in dens:
        self.assertLessEqual(abs(counts[n] - dens[n] * np.prod(params[n]["w"].shape)), 1.0)
    # at 50% the small last layer would exceed density 1: it is made dense.
    self.assertEqual(distributions.erk_densities(pp.layer_shapes(params), 0.5)["l2"],
                     1.0)

  def test_erk_with_dense_layer(self):
    params = _params()
    counts = distributions.keep_counts(params, 0.8, "erk", "last")
    self.assertEqual(counts["l2"], 300)
    self.assertEqual(sum(counts.values()), round(0.2 * 3500))
    self.assertTrue(all(c > 0 for c in counts.values()))
    with self.assertRaisesRegex(ValueError, "dense layers.*alone hold more"):
      distributions.keep_counts(params, 0.8, "erk", "first")  # l0 alone is 57% of weights

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "distribution"):
      distributions.keep_counts(_params(), 0.9, "lognormal")
    with self.assertRaisesRegex(ValueError, "not a prunable layer"):
      distributions.keep_counts(_params(), 0.9, "uniform", "l7")
    with self.assertRaisesRegex(ValueError, r"\[0, 1\)"):
      distributions.keep_counts(_params(), 1.0)


class ScheduleTest(chex.TestCase):

  def test_cubic(self):
    s = lambda t: float(schedules.cubic_sparsity(t, 0.9, 100, 200))  # noqa: E731
    self.assertEqual(s(0), 0.0)
    self.assertEqual(s(100), 0.0)
    np.testing.assert_allclose(s(150), 0.9 - 0.9 * 0.5**3, rtol=1e-6)
    np.testing.assert_allclose(s(200), 0.9)
    np.testing.assert_allclose(s(10_000), 0.9)
    np.testing.assert_allclose(float(schedules.cubic_sparsity(5, 0.9, 5, 5)), 0.9)

  def test_cosine_drop_fraction(self):
    f = lambda t: float(schedules.cosine_drop_fraction(t, 0.3, 1000))  # noqa: E731
    np.testing.assert_allclose([f(0), f(250), f(500), f(1000), f(1001)],
                               [0.3, 0.15 * (1 + np.cos(np.pi / 4)), 0.15, 0.0, 0.0], atol=1e-7)

  def test_update_steps(self):
    steps = [t for t in range(0, 1000) if schedules.is_update_step(t, 100, 500, 100)]
    self.assertEqual(steps, [100, 200, 300, 400, 500])


def _run(method, params, steps, grads_fn=None, inner=None):
  """Runs ``steps`` jitted optimizer steps; returns per-step (params, state)."""
  tx = pp.sparse_optimizer(inner or optax.sgd(0.05, momentum=0.9), method)
  state = tx.init(params)
  params = method.init(params).params  # what the first update would store
  rng = np.random.default_rng(0)

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p, dense_grads=g)
    return optax.apply_updates(p, u), s

  history = [(params, state)]
  for t in range(steps):
    g = grads_fn(t) if grads_fn else jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    params, state = step(params, state, g)
    history.append((params, state))
  return history


class MethodsTest(chex.TestCase):

  def test_gradual_hits_the_schedule_exactly(self):
    params = _params()
    counts = distributions.counts_tree(params, distributions.keep_counts(params, 0.9, "erk"))
    method = pp.sparsity.gradual_pruning(counts, 10, 50, 10)
    final = distributions.keep_counts(params, 0.9, "erk")
    for t, (p, s) in enumerate(_run(method, params, 60)):
      for name in params:
        n = params[name]["w"].size
        target = 1 - final[name] / n
        sched = float(schedules.cubic_sparsity(max(10, (t // 10) * 10) if t >= 10 else 0,
                                               target, 10, 50)) if t <= 50 else target
        want = int(np.round((1 - sched) * n)) if t >= 10 else n
        self.assertEqual(int(s.masks[name]["w"].sum()), want, msg=f"t={t} {name}")
        np.testing.assert_array_equal(np.asarray(p[name]["w"])[~np.asarray(s.masks[name]["w"])],
                                      0.0)
      self.assertTrue(all(bool(s.masks[n]["b"].all()) for n in params))

  def test_oneshot_at_init(self):
    params = _params()
    method = builders.build_oneshot(_config(method="oneshot", level=0.8), params, 100, 1.0)
    hist = _run(method, params, 5)
    for p, s in hist:
      self.assertEqual(_n_active(s.masks, params), {"l0": 400, "l1": 240, "l2": 60})
      self.assertEqual(int((p["l0"]["w"] != 0).sum()), 400)

  def test_topkast_sets_and_updates(self):
    params = _params(1)
    method = builders.build_topkast(
        _config(method="topkast", level=0.9, backward_level=0.8, update_every=5, penalty=0.0),
        params, 100, 1.0)
    hist = _run(method, params, 12, inner=optax.sgd(0.01))
    for t in range(1, len(hist)):
      (p0, s0), (p1, s1) = hist[t - 1], hist[t]
      for name in params:
        a, b = np.asarray(s0.masks[name]["w"]), np.asarray(s0.grad_masks[name]["w"])
        self.assertEqual(int(a.sum()), round(0.1 * a.size))
        self.assertEqual(int(b.sum()), round(0.2 * b.size))
        self.assertTrue(bool(np.all(b[a])))  # A inside B
        changed = np.asarray(p1[name]["w"]) != np.asarray(p0[name]["w"])
        self.assertFalse(bool(np.any(changed & ~b)))  # nothing outside B moves
        self.assertTrue(bool(np.any(changed & b & ~a)))  # B \ A does get updates
        # theta is kept dense outside A
        self.assertGreater(int((np.asarray(p1[name]["w"]) != 0).sum()), int(a.sum()))
      # A is the top-|theta| set of the params at the last refresh
      if t % 5 == 0:
        top = pp.top_k_mask(jnp.abs(p1["l0"]["w"]), round(0.1 * 2000))
        np.testing.assert_array_equal(s1.masks["l0"]["w"], top)

  def test_topkast_penalty(self):
    params = {"l": {"w": jnp.asarray([[4.0, 3.0], [2.0, 1.0]])}}
    method = pp.sparsity.top_kast({"l": {"w": 1}}, {"l": {"w": 2}}, 0.1, 1, 10)
    start = method.init(params)
    pen = method.penalty_grads(params, start.masks, start.grad_masks)
    # lambda on A, lambda / D on B minus A (D = 1/4), nothing elsewhere
    np.testing.assert_allclose(pen["l"]["w"], [[0.1 * 4.0, 0.1 / 0.25 * 3.0], [0.0, 0.0]],
                               rtol=1e-6)

  def test_rigl_drops_smallest_and_grows_largest_gradient(self):
    w = jnp.asarray([[0.5, -0.1, 0.0, 0.0], [0.3, 0.0, -0.2, 0.0]])
    counts = {"l": {"w": 4}}
    method = pp.sparsity.rigl(counts, drop_fraction=0.5, update_every=1, end_step=100)
    masks = {"l": {"w": w != 0}}
    g = {"l": {"w": jnp.asarray([[0.0, 0.0, 0.1, -9.0], [0.0, 5.0, 0.0, 0.2]])}}
    out = method.update({"l": {"w": w}}, g, masks, masks, jax.random.PRNGKey(0), jnp.asarray(1))
    frac = float(schedules.cosine_drop_fraction(1, 0.5, 100))
    self.assertEqual(int(np.floor(frac * 4)), 1)
    # drop the smallest |w| active (-0.1), grow the largest |g| inactive (-9.0 at [0, 3])
    want = np.array([[True, False, False, True], [True, False, True, False]])
    np.testing.assert_array_equal(out.masks["l"]["w"], want)
    np.testing.assert_array_equal(out.params["l"]["w"], np.where(want, w, 0.0))  # grown at 0
    self.assertEqual(int(out.masks["l"]["w"].sum()), 4)

  def test_rigl_grow_init_moves_off_zero_for_alpha_above_one(self):
    w = jnp.asarray([[0.5, -0.1, 0.0, 0.0], [0.3, 0.0, -0.2, 0.0]])
    g = {"l": {"w": jnp.asarray([[0.0, 0.0, 0.1, -9.0], [0.0, 5.0, 0.0, 0.2]])}}
    masks = {"l": {"w": w != 0}}
    for grow_init, want in [("min_active", 0.2), ("w_epsilon", 1e-3 ** 0.5)]:
      method = pp.sparsity.rigl({"l": {"w": 4}}, 0.5, 1, 100, grow_init=grow_init, alpha=2.0)
      out = method.update({"l": {"w": w}}, g, masks, masks, jax.random.PRNGKey(0), jnp.asarray(1))
      np.testing.assert_allclose(float(out.params["l"]["w"][0, 3]), want, rtol=1e-6)  # -sign(g)

  def test_rigl_count_constant_and_momentum_reset(self):
    params = _params(2)
    method = builders.build_rigl(_config(method="rigl", level=0.9, distribution="erk",
                                         update_every=3), params, 30, 1.0)
    counts = distributions.keep_counts(params, 0.9, "erk")
    hist = _run(method, params, 20)
    grew = False
    for t in range(1, len(hist)):
      (_, s0), (p1, s1) = hist[t - 1], hist[t]
      self.assertEqual(_n_active(s1.masks, params), counts)
      for name in params:
        m0, m1 = np.asarray(s0.masks[name]["w"]), np.asarray(s1.masks[name]["w"])
        np.testing.assert_array_equal(np.asarray(p1[name]["w"])[~m1], 0.0)
        grown = m1 & ~m0
        if grown.any():
          grew = True
          trace = np.asarray(s1.inner_state[0].trace[name]["w"])
          np.testing.assert_array_equal(trace[grown], 0.0)
      if t % 3:
        chex.assert_trees_all_equal(s0.masks, s1.masks)  # only at update steps
    self.assertTrue(grew)

  def test_set_grows_randomly_with_right_count(self):
    params = _params(3)
    cfg = _config(method="set", level=0.9, update_every=1)
    method_set = builders.build_set(cfg, params, 10, 1.0)
    method_rigl = builders.build_rigl(_config(method="rigl", level=0.9, update_every=1),
                                      params, 10, 1.0)
    grads = lambda t: jax.tree_util.tree_map(  # noqa: E731
        lambda x: jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape), params)
    (_, s_set), (_, s_rigl) = _run(method_set, params, 1, grads)[-1], _run(
        method_rigl, params, 1, grads)[-1]
    self.assertEqual(_n_active(s_set.masks, params), _n_active(s_rigl.masks, params))
    self.assertFalse(bool(jnp.all(s_set.masks["l0"]["w"] == s_rigl.masks["l0"]["w"])))

  def test_builder_errors(self):
    params = _params()
    with self.assertRaisesRegex(ValueError, "needs sparsity.level"):
      builders.build_rigl(_config(method="rigl", level=0.0), params, 100, 1.0)
    with self.assertRaisesRegex(ValueError, "backward_level"):
      builders.build_topkast(_config(level=0.8, backward_level=0.9), params, 100, 1.0)
    with self.assertRaisesRegex(ValueError, "past the end of training"):
      builders.build_gradual(_config(level=0.8, end_step=500), params, 100, 1.0)
    with self.assertRaisesRegex(ValueError, "distribution"):
      builders.build_set(_config(level=0.8, distribution="normal"), params, 100, 1.0)
    with self.assertRaisesRegex(ValueError, "unknown sparsity.method"):
      pp.sparsity.build_method(_config(method="lottery"), params, 100, 1.0)
    with self.assertRaisesRegex(ValueError, "grow_init"):
      builders.build_rigl(_config(level=0.8, grow_init="ones"), params, 100, 2.0)

  def test_state_survives_checkpoint_round_trip(self):
    params = _params()
    method = builders.build_rigl(_config(method="rigl", level=0.9, update_every=2), params,
                                 20, 2.0)
    p, s = _run(method, params, 5)[-1]
    ckpt = checkpoint.Checkpointer(self.create_tempdir().full_path)
    ckpt.save(5, {"params": p, "opt_state": s})
    target = jax.tree_util.tree_map(jnp.zeros_like, {"params": p, "opt_state": s})
    restored = ckpt.restore(target)
    ckpt.close()
    chex.assert_trees_all_equal(restored, {"params": p, "opt_state": s})
    self.assertIsInstance(restored["opt_state"], pp.sparsity.SparseState)


def test_erk_refuses_dense_layers_that_exceed_the_budget():
  """Dense layers holding more than 1 - S of the weights: one line, not negative densities."""
  with pytest.raises(ValueError, match="cannot be met"):
    distributions.erk_densities({"a": (7, 7, 3, 64), "b": (3, 3, 64, 64)}, 0.95, {"a"})
