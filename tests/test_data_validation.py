"""Bad data stops at load time with one DataError line; ``auto`` never falls back to a download."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment.data import DataError, load_datasets
from powerprop_jax.experiment.data import cifar, mnist

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SHARED = os.path.join(ROOT, "..", "shared", "data")
MNIST_DIR = os.path.join(SHARED, "mnist")
CIFAR_NPZ = os.path.join(SHARED, "cifar10_jpeg_subset.npz")


def _raises_one_line(fn, *needles: str) -> str:
  """Calls fn, expects a DataError whose message is one line holding every needle."""
  with pytest.raises(DataError) as info:
    fn()
  msg = str(info.value)
  assert "\n" not in msg, msg
  for needle in needles:
    assert needle in msg, (needle, msg)
  return msg


# ---------------------------------------------------------------- MNIST IDX


def _idx_bytes(arr: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
  return header + arr.astype(np.uint8).tobytes()


def _write_mnist(d, n_train=20, n_test=10, train_hw=(28, 28), test_hw=(28, 28),
                 train_labels=None, gz=True):
  """Writes the four IDX files of a tiny MNIST into directory d; returns d as a str."""
  rng = np.random.default_rng(0)
  arrays = {
      "train_images": rng.integers(0, 256, (n_train, *train_hw), dtype=np.uint8),
      "train_labels": (np.arange(n_train) % 10 if train_labels is None
                       else np.asarray(train_labels)),
      "test_images": rng.integers(0, 256, (n_test, *test_hw), dtype=np.uint8),
      "test_labels": np.arange(n_test) % 10,
  }
  for key, stem in mnist.IDX_FILES.items():
    data = _idx_bytes(arrays[key])
    if gz:
      with gzip.open(os.path.join(d, stem + ".gz"), "wb") as f:
        f.write(data)
    else:
      with open(os.path.join(d, stem), "wb") as f:
        f.write(data)
  return str(d)


def test_mnist_tiny_idx_loads(tmp_path):
  ds = mnist.load_mnist("auto", _write_mnist(tmp_path), num_validation=5)
  assert ds["train"].images.shape == (15, 784) and ds["validation"].labels.shape == (5,)
  assert ds["test"].images.shape == (10, 784)


@pytest.mark.parametrize("bad", [11, 255])
def test_mnist_label_out_of_range(tmp_path, bad):
  labels = np.arange(20) % 10
  labels[7] = bad
  d = _write_mnist(tmp_path, train_labels=labels)
  _raises_one_line(lambda: mnist.load_mnist("idx", d, 5), d, "train split",
                   f"label {bad} at index 7", "[0, 10)")


def test_mnist_label_count_differs(tmp_path):
  d = _write_mnist(tmp_path, train_labels=np.arange(19) % 10)
  _raises_one_line(lambda: mnist.load_mnist("idx", d, 5), d, "train split",
                   "20 images but 19 labels")


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_truncated_file(tmp_path, gz):
  d = _write_mnist(tmp_path, gz=gz)
  path = os.path.join(d, "t10k-images-idx3-ubyte" + (".gz" if gz else ""))
  with open(path, "rb") as f:
    raw = f.read()
  with open(path, "wb") as f:
    f.write(raw[: len(raw) // 2])
  _raises_one_line(lambda: mnist.load_mnist("idx", d, 5), path)


def test_mnist_test_image_size_differs(tmp_path):
  d = _write_mnist(tmp_path, test_hw=(32, 32))
  _raises_one_line(lambda: mnist.load_mnist("idx", d, 5), d, "test split", "32x32",
                   "train images are 28x28")


@pytest.mark.parametrize("bad", [20, -1])
def test_mnist_num_validation_out_of_range(tmp_path, bad):
  d = _write_mnist(tmp_path)
  _raises_one_line(lambda: mnist.load_mnist("idx", d, bad), f"num_validation={bad}",
                   "[0, 20)", d)


# ---------------------------------------------------------------- CIFAR npz


def _write_npz(d, train_images=None, train_labels=None, test_images=None, test_labels=None):
  """Writes a tiny CIFAR-10 npz into directory d; returns its path."""
  rng = np.random.default_rng(0)
  arrays = {
      "train_images": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
      "train_labels": (np.arange(20) % 10).astype(np.uint8),
      "test_images": rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
      "test_labels": (np.arange(10) % 10).astype(np.uint8),
  }
  for key, value in (("train_images", train_images), ("train_labels", train_labels),
                     ("test_images", test_images), ("test_labels", test_labels)):
    if value is not None:
      arrays[key] = value
  path = os.path.join(d, "tiny.npz")
  np.savez(path, **arrays)
  return path


def _load_tiny_cifar(path, num_validation=5):
  return cifar.load_cifar10("npz", os.path.dirname(path), os.path.basename(path),
                            num_validation)


def test_cifar_tiny_npz_loads(tmp_path):
  ds = _load_tiny_cifar(_write_npz(tmp_path))
  assert ds["train"].images.shape == (15, 32, 32, 3) and ds["test"].labels.shape == (10,)


@pytest.mark.parametrize("bad", [12, -1])
def test_cifar_label_out_of_range(tmp_path, bad):
  labels = np.arange(10) % 10
  labels[3] = bad
  path = _write_npz(tmp_path, test_labels=labels.astype(np.int64))
  _raises_one_line(lambda: _load_tiny_cifar(path), path, "test split",
                   f"label {bad} at index 3", "[0, 10)")


def test_cifar_float_images_refused(tmp_path):
  images = np.random.default_rng(0).random((20, 32, 32, 3), dtype=np.float32)  # in [0, 1]
  path = _write_npz(tmp_path, train_images=images)
  _raises_one_line(lambda: _load_tiny_cifar(path), path, "train split", "float32",
                   "expects uint8 pixels 0..255")


def test_cifar_label_count_differs(tmp_path):
  path = _write_npz(tmp_path, train_labels=(np.arange(21) % 10).astype(np.uint8))
  _raises_one_line(lambda: _load_tiny_cifar(path), path, "train split",
                   "20 images but 21 labels")


def test_cifar_truncated_npz(tmp_path):
  path = _write_npz(tmp_path)
  with open(path, "rb") as f:
    raw = f.read()
  with open(path, "wb") as f:
    f.write(raw[: len(raw) // 2])
  _raises_one_line(lambda: _load_tiny_cifar(path), path, "truncated or corrupt")


def test_cifar_test_image_size_differs(tmp_path):
  path = _write_npz(tmp_path, test_images=np.zeros((10, 16, 16, 3), np.uint8))
  _raises_one_line(lambda: _load_tiny_cifar(path), path, "test split", "16x16x3",
                   "train images are 32x32x3")


def test_cifar_empty_split(tmp_path):
  path = _write_npz(tmp_path, test_images=np.zeros((0, 32, 32, 3), np.uint8),
                    test_labels=np.zeros((0,), np.uint8))
  _raises_one_line(lambda: _load_tiny_cifar(path), path, "test split", "empty")


# ---------------------------------------------------------------- source=auto and tfds


@pytest.mark.parametrize("present", [(), ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte")])
def test_auto_with_incomplete_dir_names_missing_files(tmp_path, present):
  d = _write_mnist(tmp_path)
  for stem in mnist.IDX_FILES.values():
    if stem not in present:
      os.remove(os.path.join(d, stem + ".gz"))
  before = sorted(os.listdir(d))
  start = time.monotonic()
  msg = _raises_one_line(lambda: mnist.load_mnist("auto", d, 5), d, "lacks IDX files")
  assert time.monotonic() - start < 5
  for stem in mnist.IDX_FILES.values():
    assert (stem in msg) == (stem not in present), (stem, msg)
  assert sorted(os.listdir(d)) == before  # no downloads/ or any other folder created


_OFFLINE_SCRIPT = """
import sys
from powerprop_jax.experiment import data
name, source = sys.argv[1], sys.argv[2]
loader = data.load_mnist if name == "mnist" else data.load_cifar10
try:
  loader(source, "")
except data.DataError as e:
  print("DATAERROR", str(e))
"""


@pytest.mark.parametrize("name,source", [("mnist", "auto"), ("mnist", "tfds"),
                                         ("cifar10", "tfds")])
def test_tfds_unprepared_fails_fast_offline(tmp_path, name, source):
  # A subprocess, so that a regression to retrying downloads is killed instead of hanging.
  tfds_dir = tmp_path / "tfds_default"
  tfds_dir.mkdir()
  env = {**os.environ, "TFDS_DATA_DIR": str(tfds_dir), "JAX_PLATFORMS": "cpu"}
  start = time.monotonic()
  out = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT, name, source], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60)
  assert time.monotonic() - start < 20
  lines = [l for l in out.stdout.splitlines() if l.startswith("DATAERROR")]
  assert len(lines) == 1, (out.stdout, out.stderr[-2000:])
  assert f"tfds {name} train split is not prepared" in lines[0], lines[0]
  assert f"tfds build {name}" in lines[0], lines[0]
  assert os.listdir(tfds_dir) == []  # nothing downloaded or created


# ---------------------------------------------------------------- real data


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="../shared/data/mnist absent")
def test_real_mnist_loads():
  ds = mnist.load_mnist("auto", MNIST_DIR)
  assert ds["train"].images.shape == (55000, 784)
  assert ds["validation"].images.shape == (5000, 784)
  assert ds["test"].images.shape == (10000, 784)


@pytest.mark.skipif(not os.path.isfile(CIFAR_NPZ), reason="../shared/data CIFAR npz absent")
def test_real_cifar_loads_from_base_config():
  c = config_lib.base().data
  c.name, c.source, c.dir, c.num_validation = "cifar10", "npz", SHARED, 1000
  ds = load_datasets(c)
  assert ds["train"].images.shape == (9000, 32, 32, 3)
  assert ds["validation"].images.shape == (1000, 32, 32, 3)
  assert ds["test"].images.shape == (2000, 32, 32, 3)
