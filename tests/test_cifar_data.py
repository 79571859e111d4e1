"""CIFAR-10 loader (npz + tfds mock) and on-device crop/flip augmentation."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from powerprop_jax.experiment.data import DataError, augment, cifar, load_datasets

NPZ = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                   "cifar10_jpeg_subset.npz")


def _config(**kw):
  c = ml_collections.ConfigDict({"name": "cifar10", "source": "npz", "dir": os.path.dirname(NPZ),
                                 "file": os.path.basename(NPZ), "num_validation": 1000})
  c.update(kw)
  return c


@pytest.mark.skipif(not os.path.isfile(NPZ), reason="shared CIFAR-10 subset not present")
def test_npz_shapes_dtypes_ranges():
  ds = load_datasets(_config())
  assert ds["train"].images.shape == (9000, 32, 32, 3)
  assert ds["validation"].images.shape == (1000, 32, 32, 3)
  assert ds["test"].images.shape == (2000, 32, 32, 3)
  for d in ds.values():
    assert d.images.dtype == np.float32 and d.labels.dtype == np.int32
    assert set(np.unique(d.labels)) <= set(range(10))
  # the file is sorted by class: every split must still hold every class, near balanced
  for d in ds.values():
    counts = np.bincount(d.labels, minlength=10)
    assert counts.min() > 0.7 * counts.mean(), counts
  x = ds["train"].images
  np.testing.assert_allclose(x.mean((0, 1, 2)), 0.0, atol=0.05)
  np.testing.assert_allclose(x.std((0, 1, 2)), 1.0, atol=0.05)
  np.testing.assert_allclose(x.min(), (0 - cifar.MEAN.max()) / cifar.STD.min(), atol=0.2)


def test_bad_source_and_split():
  with pytest.raises(DataError, match="'npz' or 'tfds'"):
    cifar.load_cifar10(source="bogus")
  with pytest.raises(DataError, match="does not exist"):
    cifar.load_cifar10(source="npz", data_dir="/nonexistent")


def test_tfds_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=20):
    ds = cifar.load_cifar10(source="tfds", num_validation=5)
  assert ds["train"].images.shape == (15, 32, 32, 3)
  assert ds["validation"].images.shape == (5, 32, 32, 3)
  assert ds["train"].images.dtype == np.float32 and ds["test"].labels.dtype == np.int32
  lo, hi = (0 - cifar.MEAN) / cifar.STD, (1 - cifar.MEAN) / cifar.STD
  assert np.all(ds["train"].images >= lo.min() - 1e-5)
  assert np.all(ds["train"].images <= hi.max() + 1e-5)


def test_crop_flip_are_exact_pixel_shifts():
  img = jnp.arange(8 * 8 * 3, dtype=jnp.float32).reshape(8, 8, 3) + 1.0
  # offset (pad, pad), no flip: identity.
  np.testing.assert_array_equal(augment.crop_flip_one(img, 4, 4, False, 4), img)
  # flip only: exact left-right mirror.
  np.testing.assert_array_equal(augment.crop_flip_one(img, 4, 4, True, 4), img[:, ::-1])
  # offset (pad+1, pad-2): shift up 1, right 2, zeros filled in.
  out = augment.crop_flip_one(img, 5, 2, False, 4)
  np.testing.assert_array_equal(out[:-1, 2:], img[1:, :-2])
  np.testing.assert_array_equal(out[-1], 0.0)
  np.testing.assert_array_equal(out[:, :2], 0.0)


def test_random_crop_flip_deterministic_and_varied():
  images = jax.random.normal(jax.random.PRNGKey(0), (16, 32, 32, 3))
  batch = {"image": images, "label": jnp.arange(16)}
  f = jax.jit(augment.random_crop_flip)
  a = f(jax.random.PRNGKey(1), batch)
  b = f(jax.random.PRNGKey(1), batch)
  c = f(jax.random.PRNGKey(2), batch)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], batch["label"])
  assert a["image"].shape == images.shape
  assert not np.array_equal(a["image"], c["image"])
  # every output is some shift/flip of its input: each example matches one of the 162 options.
  for i in range(4):
    outs = [augment.crop_flip_one(images[i], dy, dx, fl, 4)
            for dy in range(9) for dx in range(9) for fl in (False, True)]
    assert any(np.array_equal(a["image"][i], o) for o in outs)


def test_get_augment():
  assert augment.get_augment("none") is None
  assert augment.get_augment("crop_flip") is augment.random_crop_flip
  with pytest.raises(ValueError, match="crop_flip"):
    augment.get_augment("mixup")
