"""bfloat16 compute (``model.compute_dtype``): float32 params, optimizer state and Powerprop
transform, bfloat16 matmuls/convolutions, float32 batch norm and logits."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from powerprop_jax.experiment import config as config_lib
from powerprop_jax import transform
from powerprop_jax.experiment import models, train


def _config(name: str, compute_dtype: str, alpha: float):
  config = config_lib.base()
  config.alpha = alpha
  config.model.name = name
  config.model.compute_dtype = compute_dtype
  config.train.steps = 2
  config.optimizer.momentum = 0.9   # a float optimizer state to check
  return config


def _batch(name: str) -> dict[str, jax.Array]:
  rng = np.random.default_rng(0)
  shape = (16, 28, 28, 1) if name == "lenet_300_100" else (16, 16, 16, 3)
  return {"image": jnp.asarray(rng.normal(size=shape), jnp.float32),
          "label": jnp.asarray(rng.integers(0, 10, shape[0]), jnp.int32)}


def _two_steps(model: Any, exp: train.Experiment, batch: dict[str, jax.Array]):
  """Two train steps of ``model`` from ``exp``'s initial state: (state, [loss 1, loss 2])."""
  step = jax.jit(train.make_train_step(model, exp.tx, exp.reparam))
  state, m1 = step(exp.init_state, batch)
  state, m2 = step(state, batch)
  return state, [float(m1["loss"]), float(m2["loss"])]


def _float_dtypes(tree: Any) -> set[str]:
  return {str(x.dtype) for x in jax.tree_util.tree_leaves(tree)
          if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.slow
@pytest.mark.parametrize("name,alpha", [("lenet_300_100", 4.0), ("resnet_tiny", 2.0)])
def test_bf16_train_step_matches_float32(name, alpha):
  batch = _batch(name)
  exp = train.build_experiment(_config(name, "bfloat16", alpha),
                               np.asarray(batch["image"][:1]))
  state16, loss16 = _two_steps(exp.model, exp, batch)
  # float32 reference: the loss a float32 train step reports on this batch, i.e. the float32
  # model's loss at the same initial params (created float32 under either compute dtype)
  model32 = models.get_model(name)
  shapes = jax.eval_shape(lambda k: model32.init(k, batch["image"], is_training=True),
                          jax.random.PRNGKey(0))
  start = (exp.init_state.params, exp.init_state.net_state)
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(start)

  @jax.jit
  def loss_fn(params, net_state, rng):
    w = transform.effective_params(params, alpha)
    logits, _ = model32.apply(w, net_state, rng, batch["image"], is_training=True)
    return train.cross_entropy(logits, batch["label"])
  _, _, model_key = jax.random.split(exp.init_state.rng, 3)  # as the train step splits
  loss32 = float(loss_fn(*start, model_key))
  # the same params: the first step's loss differs only by bf16 rounding (the second
  # depends on the update, which batch norm on a small batch makes chaotic)
  np.testing.assert_allclose(loss16[0], loss32, atol=1e-2)
  assert loss16[0] != loss32  # the bf16 model did compute differently
  assert np.all(np.isfinite(loss16)) and loss16[1] < 3 * np.log(10)
  # params, optimizer state and batch-norm statistics stay float32 (and finite at alpha 4)
  assert _float_dtypes(state16.params) == {"float32"}
  assert _float_dtypes(state16.opt_state) == {"float32"}
  assert _float_dtypes(state16.net_state) <= {"float32"}
  for tree in (state16.params, state16.opt_state):
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree)
               if jnp.issubdtype(x.dtype, jnp.floating))
  assert (jax.tree_util.tree_structure(state16)
          == jax.tree_util.tree_structure(exp.init_state))


def _ops(jaxpr: Any, names: tuple[str, ...]) -> list[tuple[str, tuple[str, ...], str]]:
  """(primitive, input dtypes, output dtype) of every ``names`` op, sub-jaxprs included."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in names:
      out.append((eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars),
                  str(eqn.outvars[0].aval.dtype)))
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (tuple, list)) else (param,)):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          out.extend(_ops(sub, names))
  return out


@pytest.mark.parametrize("name,shape", [("lenet_300_100", (2, 784)),
                                        ("cifar_convnet", (2, 16, 16, 3)),
                                        ("resnet_tiny", (2, 16, 16, 3))])
def test_forward_computes_in_bf16(name, shape):
  x = jnp.ones(shape, jnp.float32)
  ops = {}
  for dtype in ("float32", "bfloat16"):
    model = models.get_model(name, compute_dtype=dtype, width=0.25 if name == "cifar_convnet"
                             else 1.0)
    params, net_state = jax.eval_shape(lambda k, m=model: m.init(k, x, is_training=True),
                                       jax.random.PRNGKey(0))
    assert _float_dtypes(params) == {"float32"}  # created float32 either way
    fwd = lambda p, s, m=model: m.apply(p, s, None, x, is_training=True)  # noqa: E731
    jaxpr = jax.make_jaxpr(fwd)(params, net_state)
    assert [str(v.aval.dtype) for v in jaxpr.jaxpr.outvars][0] == "float32"  # logits
    ops[dtype] = _ops(jaxpr.jaxpr, ("dot_general", "conv_general_dilated"))
  n_conv = 0 if name == "lenet_300_100" else 1
  assert len(ops["bfloat16"]) == len(ops["float32"]) >= 1 + n_conv
  for _, ins, out in ops["bfloat16"]:
    assert set(ins) == {"bfloat16"} and out == "bfloat16"
  for _, ins, out in ops["float32"]:
    assert set(ins) == {"float32"} and out == "float32"


def test_batch_norm_runs_in_float32_under_bf16():
  x = jnp.ones((2, 16, 16, 3), jnp.float32)
  model = models.get_model("resnet_tiny", compute_dtype="bfloat16")
  params, net_state = jax.eval_shape(lambda k: model.init(k, x, is_training=True),
                                     jax.random.PRNGKey(0))
  jaxpr = jax.make_jaxpr(lambda p, s: model.apply(p, s, None, x, is_training=True))(
      params, net_state)
  # batch norm's rsqrt of the variance is computed in float32
  rsqrt = _ops(jaxpr.jaxpr, ("rsqrt",))
  assert rsqrt and all(out == "float32" for _, _, out in rsqrt)


def test_model_config_fields():
  base = config_lib.base().model
  assert set(base.keys()) >= {"name", "num_classes", "width", "compute_dtype"}
  for name in models.MODELS:
    cfg = config_lib.base().model
    cfg.name = name
    models.model_from_config(cfg)  # every model accepts every base field
  cfg = config_lib.base().model
  cfg.name, cfg.width = "resnet_tiny", 0.5
  with pytest.raises(ValueError, match="width"):
    models.model_from_config(cfg)
  with pytest.raises(ValueError, match="compute_dtype"):
    models.get_model("lenet_300_100", compute_dtype="float16")
  cfg = config_lib.base().model
  cfg.name, cfg.compute_dtype = "resnet_tiny", "bfloat16"
  order = models.creation_order(cfg, jnp.zeros((1, 16, 16, 3)))
  assert order[0] == "res_net/~/initial_conv" and order[-1] == "res_net/~/logits"
