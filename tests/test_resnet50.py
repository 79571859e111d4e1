"""One ResNet-50 train step (forward, backward, update, Top-KAST masks) on CPU, tiny batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from powerprop_jax.experiment import config as config_lib
from powerprop_jax import masks, sparsity
from powerprop_jax.experiment import train


@pytest.mark.slow
def test_resnet50_powerprop_topkast_step():
  c = config_lib.base()
  c.seed, c.alpha = 0, 2.0
  c.model.update({"name": "resnet50", "num_classes": 10})
  c.train.steps = 10
  c.optimizer.update({"learning_rate": 0.1, "momentum": 0.9, "nesterov": True})
  c.sparsity.update({"method": "topkast", "level": 0.8, "backward_level": 0.5,
                     "distribution": "uniform", "dense_layers": "first,last", "penalty": 0.0})
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  exp = train.build_experiment(c, images[:1])
  step = jax.jit(train.make_train_step(exp.model, exp.tx, exp.reparam, 0.1))
  state, metrics = step(exp.init_state, {"image": images, "label": jnp.array([1, 7])})
  assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
  sparse = sparsity.find_sparse_state(state.opt_state)
  # uniform 80% over 53 conv kernels + 1 dense, the first conv and the logits kept dense.
  forward = sparse.masks
  assert np.asarray(forward["res_net50/~/initial_conv"]["w"]).all()
  assert np.asarray(forward["res_net50/~/logits"]["w"]).all()
  conv = np.asarray(forward["res_net50/~/block_group_0/~/block_0/~/conv_0"]["w"])
  assert conv.sum() == round(0.2 * conv.size)
  before, after = exp.init_state.params, state.params
  outside = jax.tree_util.tree_map(lambda b, a, m: np.asarray((a != b) & ~m).any(),
                                   before, after, sparse.grad_masks)
  assert not any(jax.tree_util.tree_leaves(outside))  # nothing moved outside the backward set
  moved = {m for m in after if "w" in after[m] and np.asarray(after[m]["w"] != before[m]["w"]).any()}
  # Haiku's ResNet starts each residual branch's last batch-norm scale at 0, so on step 1 only
  # the stem, the projection shortcuts and the (non-zero initialised) logits get gradients.
  expected = {"res_net50/~/initial_conv", "res_net50/~/logits"} | {
      f"res_net50/~/block_group_{g}/~/block_0/~/shortcut_conv" for g in range(4)}
  assert moved == expected, moved
