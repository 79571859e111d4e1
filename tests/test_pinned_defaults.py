"""Every default a published protocol depends on, pinned: change one and a test fails.

Library: RigL/SET (drop fraction 0.3, every 100 steps, until 75% of training, cosine), Top-KAST
(backward 80->50, 90->80, 95->90; penalty 1e-4), gradual pruning's cubic schedule. Configs:
MNIST one-shot (PAPER.md section 2), the ImageNet ResNet-50 rows (section 4), Permuted MNIST
continual learning (section 5).
"""

import gzip
import importlib.util
import inspect
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import powerprop_jax as pp
from powerprop_jax import curves
from powerprop_jax import masks as masks_lib
from powerprop_jax import optim
from powerprop_jax import transform
from powerprop_jax.sparsity import builders, schedules

if importlib.util.find_spec("powerprop_jax.experiment.config") is not None:
  from powerprop_jax.experiment import config as config_lib  # pylint: disable=g-import-not-at-top
  from powerprop_jax.experiment import models  # pylint: disable=g-import-not-at-top
  from powerprop_jax.experiment.data import mnist  # pylint: disable=g-import-not-at-top
else:  # before the move into powerprop_jax/experiment
  from powerprop_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from powerprop_jax import models  # pylint: disable=g-import-not-at-top
  from powerprop_jax.data import mnist  # pylint: disable=g-import-not-at-top

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs")


def _load(name: str):
  return config_lib.load_module(os.path.join(CONFIGS, name))


def _sparsity(**kw):
  c = config_lib.base().sparsity
  c.update(kw)
  return c


# --- library defaults ------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [pp.sparsity.rigl, pp.sparsity.set_method])
def test_rigl_and_set_signature_defaults(fn):
  params = inspect.signature(fn).parameters
  assert params["drop_fraction"].default == 0.3
  assert params["update_every"].default == 100
  assert params["grow_init"].default == "auto"


def test_sparsity_config_defaults():
  s = config_lib.base().sparsity
  assert (s.drop_fraction, s.update_every, s.end_step, s.begin_step) == (0.3, 100, 0, 0)
  assert (s.penalty, s.backward_level, s.grow_init, s.distribution) == (
      1e-4, -1.0, "auto", "uniform")


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_rigl_and_set_builders_end_at_75_percent_on_the_cosine(method):
  """Config defaults, 1000 steps: T_end = 750, so step 700 drops floor(f * 1000) = 3 weights
  (T_end = 1000 would drop 61), and step 800 drops none."""
  params = {"l": {"w": jnp.asarray(np.random.default_rng(0).normal(size=(40, 50)),
                                   jnp.float32)}}
  m = pp.sparsity.build_method(_sparsity(method=method, level=0.5), params, 1000, 1.0)
  start = m.init(params)
  update = jax.jit(m.update)
  f700 = 0.3 * (1 + np.cos(np.pi * 700 / 750)) / 2
  assert int(np.floor(f700 * 1000)) == 3
  for step, most in [(700, 3), (800, 0), (750, 0), (600, None)]:
    active = start.masks["l"]["w"]
    g = {"l": {"w": jnp.where(active, 0.0, 1.0)}}     # no dropped weight regrows (RigL)
    out = update(start.params, g, start.masks, start.grad_masks, start.state,
                 jnp.asarray(step))
    changed = int((np.asarray(active) & ~np.asarray(out.masks["l"]["w"])).sum())
    if most is None:   # 600 is an update step before T_end: 28 drops
      assert changed > 0
    elif method == "rigl":
      assert changed == most, (step, changed)
    else:              # SET may regrow a weight it just dropped
      assert changed <= most, (step, changed)
    assert int(out.masks["l"]["w"].sum()) == 1000


def test_update_every_100_by_default():
  params = {"l": {"w": jnp.asarray(np.random.default_rng(1).normal(size=(20, 20)),
                                   jnp.float32)}}
  m = pp.sparsity.build_method(_sparsity(method="rigl", level=0.5), params, 10_000, 1.0)
  start = m.init(params)
  g = {"l": {"w": jnp.where(start.masks["l"]["w"], 0.0, 1.0)}}
  update = jax.jit(m.update)
  for step, changes in [(99, False), (100, True), (150, False), (200, True)]:
    out = update(start.params, g, start.masks, start.grad_masks, start.state, jnp.asarray(step))
    assert bool((out.masks["l"]["w"] != start.masks["l"]["w"]).any()) == changes, step


def test_topkast_published_backward_pairs_and_penalty():
  assert builders.topkast_backward_level(0.8) == 0.5
  assert builders.topkast_backward_level(0.9) == 0.8
  assert builders.topkast_backward_level(0.95) == 0.9
  params = {"l": {"w": jnp.asarray(np.random.default_rng(2).normal(size=(20, 20)),
                                   jnp.float32)}}
  for level, fwd, bwd in [(0.8, 80, 200), (0.9, 40, 80), (0.95, 20, 40)]:
    m = pp.sparsity.build_method(_sparsity(method="topkast", level=level), params, 100, 1.0)
    start = m.init(params)
    assert (int(start.masks["l"]["w"].sum()), int(start.grad_masks["l"]["w"].sum())) == (
        fwd, bwd)
    pen = np.asarray(m.penalty_grads(params, start.masks, start.grad_masks)["l"]["w"])
    w = np.asarray(params["l"]["w"])
    a, b = np.asarray(start.masks["l"]["w"]), np.asarray(start.grad_masks["l"]["w"])
    np.testing.assert_allclose(pen[a], 1e-4 * w[a], rtol=1e-6)                   # lambda on A
    np.testing.assert_allclose(pen[b & ~a], 1e-4 / (fwd / 400) * w[b & ~a], rtol=1e-6)
    np.testing.assert_array_equal(pen[~b], 0.0)


def test_gradual_pruning_cubic_schedule():
  for t, want in [(0, 0.0), (25, 0.9 * (1 - 0.75 ** 3)), (50, 0.9 * (1 - 0.5 ** 3)),
                  (75, 0.9 * (1 - 0.25 ** 3)), (100, 0.9), (150, 0.9)]:
    np.testing.assert_allclose(float(schedules.cubic_sparsity(t, 0.9, 0, 100)), want,
                               atol=1e-6)
  # the builder: from step 0 to 50% of training (default end), round((1 - s_t) n) kept
  params = {"l": {"w": jnp.asarray(np.random.default_rng(3).normal(size=(20, 20)),
                                   jnp.float32)}}
  m = pp.sparsity.build_method(_sparsity(method="gradual", level=0.9, update_every=10),
                               params, 200, 1.0)
  start = m.init(params)
  assert int(start.masks["l"]["w"].sum()) == 400
  update = jax.jit(m.update)
  for t in (50, 100):
    out = update(start.params, params, start.masks, start.grad_masks, start.state,
                 jnp.asarray(t))
    s = 0.9 * (1 - (1 - t / 100) ** 3)
    assert int(out.masks["l"]["w"].sum()) == round((1 - s) * 400), t


# --- configs/mnist_oneshot.py ---------------------------------------------------------------------

def test_mnist_oneshot_protocol():
  c = _load("mnist_oneshot.py").get_config()
  assert (c.model.name, c.model.num_classes, c.alpha) == ("lenet_300_100", 10, 1.0)
  assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum) == ("sgd", 0.1, 0.0)
  assert (c.optimizer.nesterov, c.optimizer.weight_decay, c.optimizer.schedule,
          c.optimizer.warmup_steps) == (False, 0.0, "constant", 0)
  assert (c.train.batch_size, c.train.steps, c.data.num_validation) == (60, 50_000, 5000)
  assert (c.data.name, c.train.augment, c.train.label_smoothing) == ("mnist", "none", 0.0)
  assert c.sparsity.method == "none"
  assert (c.prune.scope, c.prune.output_layer_multiplier) == ("layerwise", 2.0)
  np.testing.assert_allclose(
      masks_lib.keep_fractions(c.prune.min_keep_fraction, c.prune.num_keep_fractions),
      np.geomspace(0.01, 1.0, 20), rtol=1e-12)
  assert set(c.sweep.alphas) >= {1.0, 2.0, 4.0}
  lr = optim.learning_rate_schedule(c.optimizer, c.train.steps)
  assert [float(lr(s)) for s in (0, 25_000, 49_999)] == pytest.approx([0.1] * 3)


def _lenet(c):
  net = models.model_from_config(c.model)
  x = jnp.zeros((1, 784), jnp.float32)
  params, _ = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), x, True))
  return params, models.creation_order(c.model, x)


def test_mnist_lenet_shapes_and_output_layer_keeps_twice():
  c = _load("mnist_oneshot.py").get_config()
  shapes, order = _lenet(c)
  layers = transform.layer_shapes(shapes)
  assert [layers[n] for n in transform.order_layers(list(layers), order)] == [
      (784, 300), (300, 100), (100, 10)]
  rng = np.random.default_rng(0)
  weights = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), shapes)
  out_layer = transform.order_layers(list(layers), order)[-1]
  for p in (0.01, 0.3, 0.6):
    masks = curves.curve_masks(weights, p, scope=c.prune.scope,
                               output_multiplier=c.prune.output_layer_multiplier,
                               layer_order=order)
    kept = {n: int(np.asarray(leaf).sum()) for n, _, leaf in transform.selected_leaves(masks)}
    assert kept[out_layer] == round(min(1.0, 2 * p) * 1000), p
    for n in layers:
      if n != out_layer:
        assert kept[n] == round(p * np.prod(layers[n])), (n, p)


def _write_idx(path, array):
  with gzip.open(path, "wb") as f:
    f.write(struct.pack(">HBB", 0, 8, array.ndim))
    f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
    f.write(array.astype(np.uint8).tobytes())


def test_mnist_validation_is_the_last_num_validation_training_images(tmp_path):
  rng = np.random.default_rng(0)
  train = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
  labels = (np.arange(30) % 10).astype(np.uint8)
  for stem, arr in [("train-images-idx3-ubyte", train), ("train-labels-idx1-ubyte", labels),
                    ("t10k-images-idx3-ubyte", train[:10]),
                    ("t10k-labels-idx1-ubyte", labels[:10])]:
    _write_idx(os.path.join(tmp_path, stem + ".gz"), arr)
  splits = mnist.load_mnist("idx", str(tmp_path), num_validation=5)
  np.testing.assert_allclose(splits["validation"].images,
                             train[-5:].reshape(5, 784).astype(np.float32) / 255.0)
  np.testing.assert_array_equal(splits["validation"].labels, labels[-5:])
  assert len(splits["train"].labels) == 25
  assert inspect.signature(mnist.load_mnist).parameters["num_validation"].default == 5000


# --- configs/imagenet_resnet50.py ---------------------------------------------------------------

def _imagenet():
  return _load("imagenet_resnet50.py")


@pytest.mark.parametrize("row", ["dense", "topkast80", "rigl90_1x", "gmp90", "rigl80_5x_pp"])
def test_imagenet_shared_optimisation(row):
  mod = _imagenet()
  c = mod.get_config(row)
  mult = 5 if "5x" in row else 1
  assert (c.train.batch_size, c.train.steps) == (4096, 32_000 * mult)
  assert c.optimizer.learning_rate == pytest.approx(1.6)          # 0.1 per 256 images
  assert (c.optimizer.name, c.optimizer.momentum, c.optimizer.nesterov) == ("sgd", 0.9, True)
  assert (c.optimizer.weight_decay, c.train.label_smoothing) == (1e-4, 0.1)
  assert (c.model.name, c.model.num_classes, c.data.name) == ("resnet50", 1000, "imagenet2012")
  assert c.alpha == (mod.POWERPROP_ALPHA if row.endswith("_pp") else 1.0)
  # 5-epoch linear warm-up, x0.1 at epochs 30, 70, 90 (stretched by the multiplier)
  per_epoch = 1_281_167 / 4096
  assert c.optimizer.warmup_steps == round(5 * mult * per_epoch)
  lr = optim.learning_rate_schedule(c.optimizer, c.train.steps)
  at = lambda epoch: float(lr(int(epoch * mult * per_epoch)))  # noqa: E731
  assert float(lr(0)) == 0.0
  assert float(lr(c.optimizer.warmup_steps // 2)) == pytest.approx(0.8, rel=1e-3)
  assert float(lr(c.optimizer.warmup_steps)) == pytest.approx(1.6, rel=1e-6)
  assert at(29.9) == pytest.approx(1.6, rel=1e-6)
  assert at(30.1) == pytest.approx(0.16, rel=1e-5)
  assert at(69.9) == pytest.approx(0.16, rel=1e-5)
  assert at(70.1) == pytest.approx(0.016, rel=1e-5)
  assert at(90.1) == pytest.approx(0.0016, rel=1e-5)


@pytest.mark.parametrize("level,backward", [(80, 0.5), (90, 0.8), (95, 0.9)])
def test_imagenet_topkast_rows(level, backward):
  c = _imagenet().get_config(f"topkast{level}")
  s = c.sparsity
  assert (s.method, s.level, s.backward_level) == ("topkast", level / 100, backward)
  assert (s.distribution, s.dense_layers, s.penalty) == ("uniform", "first,last", 1e-4)
  assert (s.update_every, s.end_step) == (1, 32_000)


@pytest.mark.parametrize("row,level,mult", [("rigl80_1x", 0.8, 1), ("rigl90_1x", 0.9, 1),
                                            ("rigl95_5x", 0.95, 5)])
def test_imagenet_rigl_rows(row, level, mult):
  s = _imagenet().get_config(row).sparsity
  assert (s.method, s.level, s.distribution, s.dense_layers) == ("rigl", level, "erk", "first")
  assert (s.drop_fraction, s.update_every) == (0.3, 100)
  assert s.end_step == 25_000 * mult   # the official maskupdate_end_step at 1x, scaled


def test_imagenet_gmp_rows_and_published_numbers():
  mod = _imagenet()
  s = mod.get_config("gmp90").sparsity
  assert (s.method, s.level, s.begin_step, s.end_step, s.update_every) == (
      "gradual", 0.9, 10_000, 25_000, 1_000)
  assert mod.PUBLISHED == {"dense": 76.8, "topkast80": 75.03, "topkast90": 73.03,
                           "topkast95": 70.42, "rigl80_1x": 75.12, "rigl90_1x": 73.07,
                           "rigl80_5x": 77.17, "rigl90_5x": 76.42, "rigl95_5x": 74.63}


# --- configs/continual_pmnist.py ----------------------------------------------------------------

def test_continual_pmnist_settings():
  c = _load("continual_pmnist.py").get_config()
  k = c.continual
  assert (k.method, k.num_tasks, k.permutation_seed) == ("efficient_packnet", 5, 0)
  assert (k.steps_per_task, k.finetune_steps, k.prune_fraction, k.gamma) == (
      3000, 500, 0.75, 0.99)
  assert (k.scope, k.min_keep_fraction, k.num_keep_fractions, k.stop_when_full) == (
      "layerwise", 0.01, 25, False)
  assert (c.model.name, c.data.name, c.train.batch_size) == ("lenet_300_100", "mnist", 60)
  assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum,
          c.optimizer.weight_decay) == ("sgd", 0.1, 0.0, 0.0)
  assert tuple(c.sweep.alphas) == (1.0, 4.0)
