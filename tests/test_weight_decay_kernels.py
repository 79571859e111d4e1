"""``optimizer.weight_decay_kernels_only``: weight decay on conv/linear kernels only (RigL's
official ImageNet code), never on biases or batch norm; every ImageNet row uses it."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from powerprop_jax import optim
from powerprop_jax.experiment import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PARAMS = {  # Haiku names: conv and linear kernels "w", biases "b", batch norm scale/offset
    "conv2_d": {"w": jnp.ones((3, 3, 3, 4))},
    "batch_norm": {"scale": jnp.ones((1, 1, 1, 4)), "offset": jnp.ones((1, 1, 1, 4))},
    "linear": {"w": jnp.ones((4, 10)), "b": jnp.ones((10,))},
}


def _step(kernels_only: bool, mask=None):
  c = config_lib.base().optimizer
  c.update({"learning_rate": 1.0, "weight_decay": 0.5, "weight_decay_kernels_only": kernels_only})
  tx = optim.make_optimizer(c, 10, mask)
  zero = jax.tree_util.tree_map(jnp.zeros_like, PARAMS)
  updates, _ = tx.update(zero, tx.init(PARAMS), PARAMS)
  return jax.tree_util.tree_map(lambda u: float(np.unique(np.asarray(u))[0]), updates)


def test_decay_only_on_kernels():
  got = _step(True)
  assert got["conv2_d"]["w"] == got["linear"]["w"] == -0.5
  assert got["batch_norm"]["scale"] == got["batch_norm"]["offset"] == got["linear"]["b"] == 0
  assert _step(False)["linear"]["b"] == -0.5   # the default decays every parameter


def test_and_with_a_method_mask():
  off_conv = jax.tree_util.tree_map(lambda _: True, PARAMS)
  off_conv["conv2_d"]["w"] = False
  got = _step(True, off_conv)
  assert got["conv2_d"]["w"] == 0 and got["linear"]["w"] == -0.5 and got["linear"]["b"] == 0


def test_every_imagenet_row_decays_kernels_only():
  imagenet = config_lib.load_module(os.path.join(ROOT, "configs", "imagenet_resnet50.py"))
  for row in imagenet.ROWS:
    assert imagenet.get_config(row).optimizer.weight_decay_kernels_only, row
