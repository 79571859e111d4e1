"""N:M structure through sparse training: RigL and SET keep exactly N of every M weights along
axis -2 from their random start through every drop/grow update, and whole runs (LeNet, a
small conv net) end N:M at sparsity 1 - N/M with gradual pruning, RigL and SET."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import powerprop_jax as pp
from powerprop_jax import checks, structured
from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import data, train
from powerprop_jax.experiment.data import Dataset
from powerprop_jax.sparsity import distributions, magnitude, schedules

GROW = {"rigl": "gradient", "set": "random"}


def _params(seed=0):
  """A Dense kernel [16, 6], a conv kernel [3, 3, 8, 5] and their biases."""
  rng = np.random.default_rng(seed)
  shapes = {"dense": (16, 6), "conv": (3, 3, 8, 5)}
  return {name: {"w": jnp.asarray(rng.normal(size=shape), jnp.float32),
                 "b": jnp.asarray(rng.normal(size=shape[-1:]), jnp.float32)}
          for name, shape in shapes.items()}


def _counts(params, level):
  return distributions.counts_tree(params, distributions.keep_counts(params, level))


def _groups(x, m):
  """[..., I, O] -> [..., I // m, O, m]: the last axis runs along one group."""
  x = np.asarray(x)
  return np.moveaxis(x.reshape(x.shape[:-2] + (x.shape[-2] // m, m, x.shape[-1])), -2, -1)


def _reference_drop_grow(p, score, mask, n, m, fraction):
  """RigL/SET N:M by loops: drop floor(f n_active) smallest |p| of the layer (ties to the lower
  flat index), then each group grows what it lost from the previously inactive weights by
  score (ties to the lower in-group index), falling back to the just-dropped ones."""
  p, score, mask = (np.asarray(x) for x in (p, score, mask))
  active = p.size // m * n
  n_drop = int(jnp.floor(fraction * active))
  order = np.argsort(-np.where(mask, np.abs(p), -np.inf).ravel(), kind="stable")
  keep = np.zeros(p.size, bool)
  keep[order[:active - n_drop]] = True
  keep = keep.reshape(p.shape) & mask
  keep_g, mask_g, score_g = _groups(keep, m), _groups(mask, m), _groups(score, m)
  new_g = keep_g.copy()
  for idx in np.ndindex(*keep_g.shape[:-1]):
    lost = n - keep_g[idx].sum()
    inactive = [i for i in np.argsort(-score_g[idx], kind="stable") if not mask_g[idx][i]]
    dropped = [i for i in np.argsort(-score_g[idx], kind="stable")
               if mask_g[idx][i] and not keep_g[idx][i]]
    for i in (inactive + dropped)[:lost]:
      new_g[idx][i] = True
  new = np.moveaxis(new_g, -1, -2).reshape(p.shape)
  return keep, new


def _run(method, params, steps, alpha, momentum=0.9, seed=0):
  """Steps ``sparse_optimizer`` with random gradients; yields (step, params, state, grads)."""
  inner = optax.sgd(0.05, momentum=momentum)
  if alpha != 1.0:
    inner = pp.powerprop_optimizer(inner, alpha)
  tx = pp.sparse_optimizer(inner, method)
  state = tx.init(params)
  yield 0, params, state, None
  rng = np.random.default_rng(seed)

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  for t in range(steps):
    g = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32),
                               params)
    params, state = step(params, state, g)
    yield t + 1, params, state, g


# --- one-shot and gradual N:M through training ------------------------------------------------

@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_oneshot_nm_holds_through_training(alpha):
  params = _params(2)
  for t, p, s, _ in _run(magnitude.oneshot_pruning(_counts(params, 0.5), 0, "2:4"), params, 4,
                         alpha):
    if t == 0:   # the optimizer's initial state: pruned at the first update
      continue
    structured.check_nm(s.masks, 2, 4)
    for name in params:
      np.testing.assert_array_equal(np.asarray(p[name]["w"])[~np.asarray(s.masks[name]["w"])],
                                    0.0)
      assert bool(np.asarray(s.masks[name]["b"]).all())


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_gradual_nm_follows_the_cubic_schedule_to_exact_n_m(alpha):
  """n_t = round(M (1 - s_t)) per group on the cubic schedule: 8, 4, then 2:8 from step 6 on."""
  params = {"wide": {"w": jnp.asarray(np.random.default_rng(3).normal(size=(16, 4)),
                                      jnp.float32)}}
  begin, end, every = 2, 8, 2
  method = magnitude.gradual_pruning(_counts(params, 0.75), begin, end, every, structure="2:8")
  seen = []
  for t, p, s, _ in _run(method, params, 10, alpha):
    if t == 0:   # the optimizer's initial state
      continue
    last_update = min(end, begin + (t - begin) // every * every) if t >= begin else 0
    sparsity = float(schedules.cubic_sparsity(last_update, 0.75, begin, end))
    want = int(np.clip(np.round(8 * (1 - sparsity)), 2, 8))
    counts_t = np.asarray(structured.group_counts(np.asarray(s.masks["wide"]["w"]), 8))
    assert (counts_t == want).all(), (t, want, counts_t)
    assert (np.asarray(structured.group_counts(np.asarray(p["wide"]["w"]), 8)) <= want).all()
    seen.append(want)
  assert seen == [8, 8, 8, 4, 4, 2, 2, 2, 2, 2]
  structured.check_nm(s.masks, 2, 8)


# --- the method, step by step ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["rigl", "set"])
@pytest.mark.parametrize("alpha", [1.0, 2.0])
@pytest.mark.parametrize("structure", ["2:4", "1:4"])
def test_drop_grow_keeps_n_of_m_after_every_update(name, alpha, structure):
  n, m = structured.parse_structure(structure)
  params = _params()
  method = pp.sparsity.drop_and_grow(_counts(params, 1 - n / m), 0.3, 2, 8, GROW[name],
                                     alpha=alpha, structure=structure)
  changed = 0
  for t, p, s, _ in _run(method, params, 10, alpha):
    structured.check_nm(s.masks, n, m)
    if t == 0:
      before = s.masks
      continue
    for layer in params:
      mask, old = np.asarray(s.masks[layer]["w"]), np.asarray(before[layer]["w"])
      assert (np.asarray(p[layer]["w"])[~mask] == 0).all()
      assert mask.mean() == n / m
      assert bool(np.asarray(s.masks[layer]["b"]).all())
      moved = int((mask & ~old).sum())
      assert moved == int((old & ~mask).sum())          # as many grown as dropped
      if t % 2 == 0 and t <= 6:                          # update steps before f_t hits 0
        assert moved > 0, (t, layer)
      if t % 2 or t > 8:
        assert moved == 0, (t, layer)
      changed += moved
    before = s.masks
  assert changed > 0


@pytest.mark.parametrize("structure,fraction", [("2:4", 0.3), ("1:4", 0.5), ("3:4", 1.0)])
@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_rigl_update_matches_the_per_group_rule(structure, fraction, alpha):
  """One update against loops: the drop is per layer, the growth per group by |dL/dw| among
  the weights inactive before; 3:4 at f ~ 1 loses up to 3 > M - N, so uses the fallback."""
  n, m = structured.parse_structure(structure)
  params = _params(1)
  method = pp.sparsity.rigl(_counts(params, 1 - n / m), fraction, update_every=1,
                            end_step=1000, alpha=alpha, structure=structure)
  start = method.init(params)
  rng = np.random.default_rng(2)
  p = jax.tree_util.tree_map(lambda x, k: jnp.where(k, x + 0.1 * rng.normal(size=x.shape), 0),
                             start.params, start.masks)
  g = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), p)
  out = method.update(p, g, start.masks, start.grad_masks, start.state, jnp.int32(1))
  f_t = schedules.cosine_drop_fraction(1, fraction, 1000)
  fallback = 0
  for layer in params:
    keep, want = _reference_drop_grow(p[layer]["w"], np.abs(g[layer]["w"]),
                                      start.masks[layer]["w"], n, m, f_t)
    mask, old = np.asarray(out.masks[layer]["w"]), np.asarray(start.masks[layer]["w"])
    np.testing.assert_array_equal(mask, want, err_msg=layer)
    np.testing.assert_array_equal(np.asarray(out.grad_masks[layer]["w"]), want)
    w, new_w = np.asarray(p[layer]["w"]), np.asarray(out.params[layer]["w"])
    np.testing.assert_array_equal(new_w[keep], w[keep])        # survivors keep their value
    np.testing.assert_array_equal(new_w[~mask], 0.0)
    grown = mask & ~old
    if alpha == 1.0:                                           # grow_init "auto": zero
      np.testing.assert_array_equal(new_w[grown], 0.0)
    else:                                                      # "min_active", downhill
      smallest = np.abs(w[keep]).min()
      np.testing.assert_allclose(new_w[grown],
                                 -np.sign(np.asarray(g[layer]["w"]))[grown] * smallest)
    regrown = mask & old & ~keep
    np.testing.assert_array_equal(new_w[regrown], w[regrown])  # fallback keeps its value
    fallback += int(regrown.sum())
  assert (fallback > 0) == (structure == "3:4")


def test_set_grows_at_random_not_by_gradient():
  """SET with the gradient RigL would follow: its growth differs from RigL's, stays N:M."""
  params = _params(1)
  method = pp.sparsity.set_method(_counts(params, 0.5), 0.5, 1, 1000, structure="2:4")
  start = method.init(params)
  g = jax.tree_util.tree_map(
      lambda x: jnp.asarray(np.random.default_rng(3).normal(size=x.shape), jnp.float32), params)
  out = method.update(start.params, g, start.masks, start.grad_masks, start.state, jnp.int32(1))
  structured.check_nm(out.masks, 2, 4)
  f_t = schedules.cosine_drop_fraction(1, 0.5, 1000)
  for layer in params:
    _, by_gradient = _reference_drop_grow(start.params[layer]["w"], np.abs(g[layer]["w"]),
                                          start.masks[layer]["w"], 2, 4, f_t)
    assert (np.asarray(out.masks[layer]["w"]) != by_gradient).any(), layer


def test_ties_grow_the_lowest_in_group_index():
  """A zero gradient ties every candidate: each group grows its first inactive weights."""
  params = {"l": {"w": jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)}}
  method = pp.sparsity.rigl(_counts(params, 0.5), 1.0, 1, 1000, structure="2:4")
  start = method.init(params)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  out = method.update(start.params, zeros, start.masks, start.grad_masks, start.state,
                      jnp.int32(1))
  _, want = _reference_drop_grow(start.params["l"]["w"], np.zeros((8, 3)),
                                 start.masks["l"]["w"], 2, 4,
                                 schedules.cosine_drop_fraction(1, 1.0, 1000))
  np.testing.assert_array_equal(np.asarray(out.masks["l"]["w"]), want)
  again = method.update(start.params, zeros, start.masks, start.grad_masks, start.state,
                        jnp.int32(1))
  np.testing.assert_array_equal(np.asarray(again.masks["l"]["w"]), want)


@pytest.mark.parametrize("name", ["rigl", "set"])
def test_initial_mask_is_random_n_of_m_from_the_seed(name):
  params = _params()
  counts = _counts(params, 0.5)
  make = lambda seed: pp.sparsity.drop_and_grow(counts, 0.3, 10, 100, GROW[name], seed=seed,  # noqa: E731
                                                structure="2:4").init(params)
  first, same, other = make(0), make(0), make(1)
  structured.check_nm(first.masks, 2, 4)
  by_magnitude = structured.nm_masks(params, 2, 4)
  for layer in params:
    mask = np.asarray(first.masks[layer]["w"])
    np.testing.assert_array_equal(mask, np.asarray(same.masks[layer]["w"]))
    assert (mask != np.asarray(other.masks[layer]["w"])).any()
    assert (mask != np.asarray(by_magnitude[layer]["w"])).any()   # random, not by |w|
    np.testing.assert_array_equal(np.asarray(first.params[layer]["w"])[~mask], 0.0)


def test_grown_weights_have_their_momentum_reset():
  params = _params()
  method = pp.sparsity.rigl(_counts(params, 0.5), 0.3, 3, 30, structure="2:4")
  prev = None
  for t, _, s, _ in _run(method, params, 6, 1.0):
    if prev is not None and t % 3 == 0:
      trace = s.inner_state[0].trace
      for layer in params:
        grown = np.asarray(s.masks[layer]["w"]) & ~np.asarray(prev.masks[layer]["w"])
        assert grown.any()
        np.testing.assert_array_equal(np.asarray(trace[layer]["w"])[grown], 0.0)
        assert (np.asarray(trace[layer]["w"])[~grown & np.asarray(s.masks[layer]["w"])]
                != 0).any()
    prev = s


def test_non_divisible_layer_named_at_init():
  params = {"first": {"w": jnp.ones((3, 3, 3, 8))}, "dense": {"w": jnp.ones((8, 4))}}
  with pytest.raises(ValueError, match=r"'first/w' has shape \(3, 3, 3, 8\)") as err:
    pp.sparsity.rigl(_counts(params, 0.5), end_step=10, structure="2:4").init(params)
  assert "\n" not in str(err.value)


def test_unstructured_rigl_is_unchanged_by_the_new_argument():
  params = _params()
  counts = _counts(params, 0.7)
  plain = pp.sparsity.rigl(counts, 0.3, 2, 8, seed=3)
  explicit = pp.sparsity.rigl(counts, 0.3, 2, 8, seed=3, structure="")
  for (_, _, a, _), (_, _, b, _) in zip(_run(plain, params, 4, 1.0), _run(explicit, params, 4, 1.0)):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.masks, b.masks)


# --- whole runs through train_and_evaluate ---------------------------------------------------

def _lenet_config(method, structure, alpha, steps=12):
  n, m = structured.parse_structure(structure)
  c = config_lib.base()
  c.model.name = "lenet_300_100"
  c.alpha = alpha
  c.optimizer.learning_rate = 0.05
  c.train.steps, c.train.batch_size, c.train.chunk_steps = steps, 32, steps
  c.train.log_every = c.train.eval_every = c.train.checkpoint_every = steps
  c.train.eval_batch_size = 100
  c.sparsity.update(method=method, level=1 - n / m, structure=structure, update_every=3,
                    end_step=9)
  if method == "gradual":
    c.sparsity.begin_step = 3
  return c


@pytest.fixture(scope="module")
def digits():
  return data.prototype_digits(96, 100, seed=0, dim=32)


def _kernels(masks):
  """{module: kernel mask} of the Haiku modules with a "w"."""
  return {module: np.asarray(leaves["w"]) for module, leaves in masks.items() if "w" in leaves}


@pytest.mark.parametrize("method", ["gradual", "rigl", "set"])
@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_lenet_run_ends_n_of_m(method, alpha, digits, tmp_path):
  structure = "1:4" if (method, alpha) == ("rigl", 2.0) else "2:4"
  n, m = structured.parse_structure(structure)
  config = _lenet_config(method, structure, alpha)
  train.check_config(config)
  state, _ = train.train_and_evaluate(config, str(tmp_path), digits, log=lambda s: None)
  masks = train.forward_masks(state.opt_state)
  structured.check_nm(masks, n, m)
  kernels = _kernels(masks)
  assert len(kernels) == 3
  for layer, mask in kernels.items():
    assert 1 - mask.mean() == 1 - n / m, layer     # realised sparsity, exactly
  effective = pp.sparsity.forward_params(state.params, state.opt_state)
  for w, k in zip(jax.tree_util.tree_leaves(effective), jax.tree_util.tree_leaves(masks)):
    assert (np.asarray(w)[~np.asarray(k)] == 0).all()
  if method != "gradual":                            # drop/grow moved the random start
    # the run donated exp.init_state's buffers: build the same start again
    start = train.forward_masks(
        train.build_experiment(config, digits["train"].images[:1]).init_state.opt_state)
    structured.check_nm(start, n, m)
    assert any((np.asarray(a) != np.asarray(b)).any() for a, b in
               zip(jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(masks)))


def _conv_config(method, alpha):
  c = config_lib.base()
  c.data.name = "cifar10"
  c.model.name, c.model.width = "cifar_convnet", 0.125
  c.alpha = alpha
  c.optimizer.learning_rate = 0.01
  c.train.steps, c.train.batch_size, c.train.chunk_steps = 4, 8, 4
  c.train.log_every = c.train.eval_every = c.train.checkpoint_every = 4
  c.train.eval_batch_size = 16
  c.sparsity.update(method=method, level=0.5, structure="2:4", update_every=2, end_step=3,
                    dense_layers="first")
  return c


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_conv_net_rigl_run_ends_n_of_m(alpha, tmp_path):
  rng = np.random.default_rng(0)
  ds = Dataset(rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
               rng.integers(0, 10, 16).astype(np.int32))
  config = _conv_config("rigl", alpha)
  state, _ = train.train_and_evaluate(config, str(tmp_path),
                                        {"train": ds, "validation": ds, "test": ds},
                                        log=lambda s: None)
  masks = train.forward_masks(state.opt_state)
  assert np.asarray(masks["conv_0"]["w"]).all()     # the 3-channel first conv stays dense
  pruned = {k: v for k, v in masks.items() if k != "conv_0" and "w" in v}
  assert len(pruned) == 8 and np.ndim(pruned["conv_5"]["w"]) == 4
  structured.check_nm(pruned, 2, 4)
  for layer, mask in _kernels(pruned).items():
    assert mask.mean() == 0.5, layer
  start = _kernels(train.forward_masks(train.build_experiment(config, ds.images[:1])
                                      .init_state.opt_state))
  assert any((start[k] != v).any() for k, v in _kernels(pruned).items())


# --- config errors ---------------------------------------------------------------------------

def test_structure_with_topkast_is_refused():
  config = _lenet_config("rigl", "2:4", 1.0)
  config.sparsity.method = "topkast"
  with pytest.raises(checks.ConfigError, match=r"structure=2:4 needs sparsity.method in .*"
                     r"'rigl', 'set'\], got 'topkast'"):
    train.check_config(config)


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_level_other_than_1_minus_n_over_m_is_refused(method):
  config = _lenet_config(method, "2:4", 1.0)
  config.sparsity.level = 0.9
  with pytest.raises(checks.ConfigError, match=r"set sparsity.level=0.5, got 0.9") as err:
    train.check_config(config)
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["oneshot", "rigl", "set"])
def test_non_divisible_layer_named_and_accepted_dense(method, digits):
  """A listed dense layer is neither checked nor pruned (oneshot pruned it to N:M before)."""
  config = _lenet_config(method, "2:8", 1.0)
  config.sparsity.begin_step = 0                      # oneshot: prune at init
  match = r"structure=2:8: .*'mlp/~/linear_1/w' has shape \(300, 100\).*sparsity.dense_layers"
  with pytest.raises(checks.ConfigError, match=match) as err:
    train.check_config(config)          # from the model's shapes, before any data is read
  assert "\n" not in str(err.value)
  with pytest.raises(checks.ConfigError, match=match):
    train.build_experiment(config, digits["train"].images[:1])
  config.sparsity.dense_layers = "mlp/~/linear_1,mlp/~/linear_2"
  exp = train.build_experiment(config, digits["train"].images[:1])
  masks = train.forward_masks(exp.init_state.opt_state)
  structured.check_nm({"mlp/~/linear_0": masks["mlp/~/linear_0"]}, 2, 8)
  assert np.asarray(masks["mlp/~/linear_1"]["w"]).all()
  assert np.asarray(masks["mlp/~/linear_2"]["w"]).all()
