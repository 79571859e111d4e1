"""N:M structured sparsity: masks along axis -2, compression, pruning curves."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import powerprop_jax as pp
from powerprop_jax import curves, structured
from powerprop_jax.sparsity import distributions, magnitude


def _params(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"dense": (16, 6), "conv": (3, 3, 8, 5), "out": (8, 3)}
  params = {name: {"w": jnp.asarray(rng.normal(size=shape), jnp.float32),
                   "b": jnp.asarray(rng.normal(size=shape[-1:]), jnp.float32)}
            for name, shape in shapes.items()}
  return params


def _reference_nm(w, n, m):
  """Top-n |w| per group of m along axis -2 (stable ties), by a sort over a moved axis."""
  w = np.abs(np.asarray(w))
  groups = np.moveaxis(w.reshape(w.shape[:-2] + (w.shape[-2] // m, m, w.shape[-1])), -2, -1)
  order = np.argsort(-groups, axis=-1, kind="stable")
  keep = np.zeros(groups.shape, bool)
  np.put_along_axis(keep, order[..., :n], True, axis=-1)
  return np.moveaxis(keep, -1, -2).reshape(w.shape)


def test_nm_masks_keep_top_n_per_group_along_axis_minus_2():
  params = _params()
  masks = structured.nm_masks(params, 2, 4)
  structured.check_nm(masks, 2, 4)
  for name in params:
    w, mask = np.asarray(params[name]["w"]), np.asarray(masks[name]["w"])
    np.testing.assert_array_equal(mask, _reference_nm(w, 2, 4), err_msg=name)
    counts = mask.reshape(w.shape[:-2] + (w.shape[-2] // 4, 4, w.shape[-1])).sum(axis=-2)
    assert (counts == 2).all(), name
    assert bool(np.asarray(masks[name]["b"]).all())
  # the pattern is not along the output axis: a run of 4 outputs does not keep 2
  last = np.asarray(masks["dense"]["w"]).reshape(16, 3, 2).sum(-1)
  assert not (last == 1).all()


def test_ties_go_to_the_lower_index_and_n_may_be_traced():
  w = jnp.ones((8, 2))
  mask = np.asarray(jax.jit(structured.nm_mask, static_argnums=2)(w, jnp.int32(1), 4))
  np.testing.assert_array_equal(mask[:, 0], [1, 0, 0, 0, 1, 0, 0, 0])


def test_check_nm_refuses_a_wrong_count():
  masks = structured.nm_masks(_params(), 2, 4)
  masks["dense"]["w"] = masks["dense"]["w"].at[0, 0].set(~masks["dense"]["w"][0, 0])
  with pytest.raises(ValueError,
                     match=r"'dense/w' is not 2:4: 1 of 24 groups .* group \(0, 0\) keeps 3"):
    structured.check_nm(masks, 2, 4)


@pytest.mark.parametrize("text", ["4:4", "5:4", "0:4", "a:b", "2", "2:4:8", "-1:4", None])
def test_bad_structure_strings(text):
  with pytest.raises(ValueError, match="structure must be") as err:
    structured.parse_structure(text)
  assert "\n" not in str(err.value)


def test_parse_structure():
  assert structured.parse_structure("2:4") == (2, 4)
  assert structured.parse_structure(" 1:8 ") == (1, 8)
  assert structured.parse_structure("") is None


def test_layer_not_divisible_by_m_is_named_with_its_shape():
  params = {"first": {"w": jnp.ones((3, 3, 3, 8))}, "dense": {"w": jnp.ones((8, 4))}}
  with pytest.raises(ValueError, match=r"'first/w' has shape \(3, 3, 3, 8\)") as err:
    structured.nm_masks(params, 2, 4)
  assert "\n" not in str(err.value)
  counts = distributions.counts_tree(params, distributions.keep_counts(params, 0.5))
  with pytest.raises(ValueError, match=r"'first/w' has shape \(3, 3, 3, 8\)"):
    pp.sparse_optimizer(optax.sgd(0.1), magnitude.oneshot_pruning(counts, 0, "2:4")).init(
        params)


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_compress_decompress_bit_exact(dtype):
  rng = np.random.default_rng(1)
  w = rng.normal(size=(2, 3, 12, 5)).astype(dtype)
  w = np.where(_reference_nm(w.astype(np.float32), 2, 4), w, np.zeros((), dtype))
  w[0, 0, :4, 0] = [0, 0, 0, 3]          # a group with fewer than N non-zeros
  values, indices = structured.nm_compress(w, 2, 4)
  assert values.shape == indices.shape == (2, 3, 3, 2, 5)
  assert indices.dtype == np.uint8 and values.dtype == w.dtype
  assert (np.diff(indices.astype(int), axis=-2) > 0).all()   # ascending within a group
  back = structured.nm_decompress(values, indices, 4)
  np.testing.assert_array_equal(back.view(np.uint8), w.view(np.uint8))
  jax_back = structured.nm_decompress(*structured.nm_compress(jnp.asarray(w), 2, 4), 4)
  np.testing.assert_array_equal(np.asarray(jax_back).view(np.uint8), w.view(np.uint8))
  with pytest.raises(ValueError, match="more than 1 non-zeros"):
    structured.nm_compress(w, 1, 4)


def test_nm_pruning_curve():
  params = _params()
  seen = []
  rows = curves.nm_pruning_curve(params, lambda m: seen.append(m) or 0.5, ["2:4", "1:4"])
  assert [r["structure"] for r in rows] == ["2:4", "1:4"]
  assert [r["weights_remaining"] for r in rows] == [0.5, 0.25]
  structured.check_nm(seen[1], 1, 4)
  with pytest.raises(ValueError, match="needs 'N:M'"):
    curves.nm_pruning_curve(params, lambda m: 0.0, [""])
