"""Sparse kernels for inference: BCOO/BCSR logits equal the masked dense model's."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse

from powerprop_jax import sparse_inference as si


def _masked(params, sparsity=0.8, seed=0):
  """Weight matrices and conv kernels zeroed at random (``sparsity`` of them)."""
  rng = np.random.default_rng(seed)
  return {module: {name: jnp.where(rng.random(x.shape) < sparsity, 0.0, x) if x.ndim >= 2 else x
                   for name, x in leaves.items()} for module, leaves in params.items()}


def _mlp():
  model = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([24, 16, 5])(x)))
  x = jax.random.normal(jax.random.PRNGKey(0), (7, 30))
  return model, _masked(model.init(jax.random.PRNGKey(1), x)), x


def test_haiku_mlp_with_bcoo_kernels_gives_the_masked_dense_logits():
  model, params, x = _mlp()
  sparse_params = si.to_bcoo(params)
  for module in params:
    kernel = sparse_params[module]["w"]
    assert isinstance(kernel, sparse.BCOO) and kernel.shape == params[module]["w"].shape
    assert kernel.nse == int(np.count_nonzero(params[module]["w"]))
    assert not isinstance(sparse_params[module]["b"], sparse.BCOO)
  logits = jax.jit(si.sparse_apply(model.apply))(sparse_params, x)
  np.testing.assert_allclose(logits, model.apply(params, x), atol=1e-5)
  assert si.sparse_bytes(sparse_params) < si.dense_bytes(params)


def test_convolutions_stay_dense():
  def forward(x):
    x = jax.nn.relu(hk.Conv2D(4, 3)(x))
    return hk.Linear(3)(hk.Flatten()(x))
  model = hk.without_apply_rng(hk.transform(forward))
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 6, 6, 2))
  params = _masked(model.init(jax.random.PRNGKey(3), x))
  sparse_params = si.to_bcoo(params)
  assert isinstance(sparse_params["conv2_d"]["w"], jax.Array)
  assert isinstance(sparse_params["linear"]["w"], sparse.BCOO)
  np.testing.assert_allclose(si.sparse_apply(model.apply)(sparse_params, x),
                             model.apply(params, x), atol=1e-5)


@pytest.mark.parametrize("fmt", ["bcoo", "bcsr"])
def test_explicit_mlp_apply_matches_haiku(fmt):
  model, params, x = _mlp()
  sparse_params = si.to_sparse(params, fmt)
  if fmt == "bcsr":
    assert sparse_params["mlp/~/linear_0"]["w"].shape == (24, 30)   # stored transposed
  want = model.apply(params, x)
  np.testing.assert_allclose(jax.jit(si.mlp_apply)(sparse_params, x), want, atol=1e-5)
  np.testing.assert_allclose(si.mlp_apply(params, x), want, atol=1e-5)


def test_layer_order_names_the_output_layer():
  rng = np.random.default_rng(0)
  names = ["linear_0", "linear_2", "linear_10"]
  sizes = [6, 5, 4, 3]
  params = {n: {"w": jnp.asarray(rng.normal(size=(a, b)), jnp.float32)}
            for n, a, b in zip(names, sizes[:-1], sizes[1:])}
  x = jnp.ones((2, 6))
  h = jax.nn.relu(x @ params["linear_0"]["w"])
  want = jax.nn.relu(h @ params["linear_2"]["w"]) @ params["linear_10"]["w"]
  got = si.mlp_apply(si.to_sparse(params, "bcsr"), x, layer_order=names)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_bad_format_and_no_kernels():
  _, params, _ = _mlp()
  with pytest.raises(ValueError, match="fmt must be one of"):
    si.to_sparse(params, "csr")
  with pytest.raises(ValueError, match="selects no parameter"):
    si.to_bcoo({"bn": {"scale": jnp.ones(3)}})
