"""The sparse weights file: bit-exact round trips, size bound, N:M layout, refused files."""

import json
import os
import struct
import zlib

import jax.numpy as jnp
import numpy as np
import pytest

import powerprop_jax as pp
from powerprop_jax import export, structured


def _sparse(rng, shape, sparsity, dtype=np.float32):
  """Random weights with exactly round((1 - sparsity) size) non-zeros at random places."""
  w = rng.normal(size=shape).astype(dtype)
  keep = np.zeros(w.size, bool)
  keep[rng.choice(w.size, int(round((1 - sparsity) * w.size)), replace=False)] = True
  return np.where(keep.reshape(shape), w, np.zeros((), dtype))


def _lenet(rng, sparsity):
  """Haiku-style LeNet-300-100 with sparse kernels and dense (non-zero) biases."""
  sizes = [784, 300, 100, 10]
  return {f"mlp/~/linear_{i}": {"w": _sparse(rng, (a, b), sparsity),
                                "b": rng.normal(size=b).astype(np.float32)}
          for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}


def _assert_bits_equal(a, b):
  assert a.dtype == b.dtype and a.shape == b.shape
  np.testing.assert_array_equal(a.view(f"u{a.dtype.itemsize}"), b.view(f"u{b.dtype.itemsize}"))


def test_haiku_tree_round_trip_is_bit_exact(tmp_path):
  rng = np.random.default_rng(0)
  params = _lenet(rng, 0.9)
  w = params["mlp/~/linear_1"]["w"]
  w[0, :4] = [-0.0, np.nan, np.inf, -np.float32(1e-45)]   # -0.0 and NaN are kept as stored
  params["extra"] = {"count": np.int32(7), "flags": rng.random((5, 3)) > 0.5,
                     "f64": _sparse(rng, (40,), 0.95, np.float64),
                     "ints": _sparse(rng, (3, 64), 0.99, np.int64), "empty": np.zeros((0, 4))}
  params["no_params"] = {}
  path = tmp_path / "lenet.ppsparse"
  summary = export.save_sparse(path, params, metadata={"lr": 0.1, "model": "lenet"})
  loaded, meta = export.load_sparse(path)
  assert list(loaded) == list(params) and loaded["no_params"] == {}
  for module in params:
    for name in params[module]:
      _assert_bits_equal(loaded[module][name], np.asarray(params[module][name]))
  assert summary["file_bytes"] == os.path.getsize(path)
  assert summary["layers"]["mlp/~/linear_0/w"]["sparsity"] == pytest.approx(0.9)
  assert summary["layers"]["mlp/~/linear_0/b"]["encoding"] == "dense"
  assert meta["user"] == {"lr": 0.1, "model": "lenet"}
  assert meta["powerprop_jax_version"] == pp.__version__
  assert meta["layers"] == summary["layers"]
  assert [p.name for p in tmp_path.iterdir()] == ["lenet.ppsparse"]  # no temporary left


def test_flax_frozen_dict_of_jax_arrays_round_trip(tmp_path):
  flax = pytest.importorskip("flax")
  rng = np.random.default_rng(1)
  tree = {"params": {"Dense_0": {"kernel": jnp.asarray(_sparse(rng, (32, 16), 0.8)),
                                 "bias": jnp.zeros(16)},
                     "Conv_0": {"kernel": jnp.asarray(_sparse(rng, (3, 3, 4, 8), 0.5))}}}
  export.save_sparse(tmp_path / "f.ppsparse", flax.core.freeze(tree))
  loaded, meta = export.load_sparse(tmp_path / "f.ppsparse")
  for module, leaves in tree["params"].items():
    for name, x in leaves.items():
      _assert_bits_equal(loaded["params"][module][name], np.asarray(x))
  assert meta["layers"]["params/Dense_0/bias"]["sparsity"] == 1.0
  assert meta["user"] is None


def test_bfloat16_values_are_the_bf16_cast_exactly(tmp_path):
  rng = np.random.default_rng(2)
  params = {"l": {"w": _sparse(rng, (64, 32), 0.9), "b": rng.normal(size=32),
                  "step": np.int32(3)}}
  path = tmp_path / "bf16.ppsparse"
  small = export.save_sparse(path, params, values_dtype="bfloat16")
  loaded, meta = export.load_sparse(path)
  for name in ("w", "b"):
    _assert_bits_equal(loaded["l"][name], params["l"][name].astype(jnp.bfloat16))
  _assert_bits_equal(loaded["l"]["step"], np.asarray(params["l"]["step"]))
  assert meta["layers"]["l/w"]["dtype"] == "bfloat16"
  assert small["file_bytes"] < export.save_sparse(path, params)["file_bytes"]
  with pytest.raises(ValueError, match="values_dtype must be one of"):
    export.save_sparse(path, params, values_dtype="float8")


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9, 0.95, 0.99, 0.999])
def test_file_within_1_5x_of_the_nonzero_values(tmp_path, sparsity):
  """file bytes <= 1.5 (non-zero value bytes + dense leaves' bytes), float32."""
  rng = np.random.default_rng(3)
  lenet = _lenet(rng, sparsity)
  wide = {"dense": {"kernel": _sparse(rng, (1024, 1024), sparsity)}}
  for name, params in [("lenet", lenet), ("wide", wide)]:
    summary = export.save_sparse(tmp_path / f"{name}.ppsparse", params)
    payload = sum(np.count_nonzero(x) * 4 if x.ndim == 2 else x.nbytes
                  for leaves in params.values() for x in leaves.values())
    assert summary["file_bytes"] <= 1.5 * payload, (name, summary["file_bytes"], payload)
    assert summary["file_bytes"] < summary["dense_bytes"]


def test_n_m_leaves_use_the_compressed_layout(tmp_path):
  rng = np.random.default_rng(4)
  params = {"dense": {"w": rng.normal(size=(16, 8)).astype(np.float32),
                      "b": rng.normal(size=8).astype(np.float32)},
            "conv": {"w": rng.normal(size=(3, 3, 8, 4)).astype(np.float32)},
            "first": {"w": rng.normal(size=(3, 3, 3, 8)).astype(np.float32)}}
  masks = structured.nm_masks({k: v for k, v in params.items() if k != "first"}, 2, 4)
  for name in ("dense", "conv"):
    params[name]["w"] = np.where(masks[name]["w"], params[name]["w"], 0)
  params["dense"]["w"][:4, 0] = [0, 0, 0, 1.5]   # fewer than N in a group still fits
  summary = export.save_sparse(tmp_path / "nm.ppsparse", params, structure="2:4")
  layers = summary["layers"]
  assert [layers[f"{m}/w"]["encoding"] for m in ("dense", "conv", "first")] == [
      "nm", "nm", "dense"]
  assert layers["dense/w"]["bytes"] == 64 * 4 + 64 * 2 // 8   # N values + 2-bit indices
  loaded, meta = export.load_sparse(tmp_path / "nm.ppsparse")
  assert meta["structure"] == "2:4"
  for module in params:
    for name in params[module]:
      _assert_bits_equal(loaded[module][name], params[module][name])


def test_documented_layout_read_by_an_independent_reader(tmp_path):
  """The module docstring is the spec: a minimal reader written from it decodes a delta leaf."""
  w = np.zeros((40, 50), np.float32)
  w.flat[[3, 4, 1000, 1999]] = [1.0, -2.0, 3.0, 4.0]
  export.save_sparse(tmp_path / "d.ppsparse", {"m": {"w": w}})
  data = (tmp_path / "d.ppsparse").read_bytes()
  magic, version, h, p, crc = struct.unpack_from("<8sIIQI", data)
  assert (magic, version, len(data)) == (b"PPJXSPRS", 1, 28 + h + p)
  assert zlib.crc32(data[28:]) == crc
  header = json.loads(zlib.decompress(data[28:28 + h]))
  entry = header["leaves"][header["tree"]["m"]["w"]]
  payload = data[28 + h:]
  assert entry["encoding"] == "delta"
  off, n = entry["positions"]
  bits = "".join(f"{b:08b}" for b in payload[off:off + n])
  width = entry["width"]
  gaps = [int(bits[k * width:(k + 1) * width], 2) for k in range(entry["nnz"])]
  index = np.cumsum(np.asarray(gaps) + 1) - 1
  off, n = entry["values"]
  values = np.frombuffer(payload[off:off + n], "<f4")
  np.testing.assert_array_equal(index, [3, 4, 1000, 1999])
  np.testing.assert_array_equal(values, [1.0, -2.0, 3.0, 4.0])


def _refused(path):
  with pytest.raises(export.SparseFormatError) as err:
    export.load_sparse(path)
  message = str(err.value)
  assert message.startswith(f"{path}: not a readable powerprop_jax sparse file")
  assert "\n" not in message
  return message


def test_malformed_files_are_refused_in_one_line_naming_the_file(tmp_path):
  good = tmp_path / "good.ppsparse"
  export.save_sparse(good, {"l": {"w": _sparse(np.random.default_rng(5), (30, 20), 0.9)}})
  data = good.read_bytes()
  value = len(data) - struct.unpack_from("<8sIIQI", data)[3]   # the payload's first byte
  cases = {"truncated": (data[:-1], "truncated or padded"),
           "padded": (data + b"\0", "truncated or padded"),
           "preamble_cut": (data[:20], "shorter than the 28-byte preamble"),
           "empty": (b"", "magic"), "garbage": (np.random.default_rng(6).bytes(300), "magic"),
           "flipped": (data[:value] + bytes([data[value] ^ 1]) + data[value + 1:],
                       "CRC-32 mismatch")}
  for name, (blob, reason) in cases.items():
    (tmp_path / name).write_bytes(blob)
    assert reason in _refused(tmp_path / name), name
  np.savez(tmp_path / "weights.npz", w=np.ones(3))
  assert "magic" in _refused(tmp_path / "weights.npz")
  # a well-formed container whose header lies about a leaf
  head = zlib.decompress(data[28:28 + struct.unpack_from("<8sIIQI", data)[2]])
  bad = json.loads(head)
  bad["leaves"][0]["nnz"] = 10 ** 6
  blob = zlib.compress(json.dumps(bad).encode())
  payload = data[len(data) - struct.unpack_from("<8sIIQI", data)[3]:]
  crafted = struct.pack("<8sIIQI", b"PPJXSPRS", 1, len(blob), len(payload),
                        zlib.crc32(payload, zlib.crc32(blob))) + blob + payload
  (tmp_path / "lying").write_bytes(crafted)
  assert "encoding 'delta' with 1000000 of 600" in _refused(tmp_path / "lying")
  with pytest.raises(FileNotFoundError):
    export.load_sparse(tmp_path / "missing.ppsparse")


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / "keep.ppsparse"
  export.save_sparse(path, {"l": {"w": np.ones((2, 2), np.float32)}})
  before = path.read_bytes()

  def crash(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(OSError, match="disk full"):
    export.save_sparse(path, {"l": {"w": np.zeros((2, 2), np.float32)}})
  assert path.read_bytes() == before
  assert [p.name for p in tmp_path.iterdir()] == ["keep.ppsparse"]


def test_bad_inputs_and_failed_saves_leave_the_old_file(tmp_path):
  path = tmp_path / "keep.ppsparse"
  export.save_sparse(path, {"l": {"w": np.ones((2, 2), np.float32)}})
  before = path.read_bytes()
  with pytest.raises(ValueError, match="JSON-serialisable"):
    export.save_sparse(path, {"l": {"w": np.zeros((2, 2))}}, metadata={"f": object()})
  with pytest.raises(ValueError, match=r"got a list at 'l/w'"):
    export.save_sparse(path, {"l": {"w": [1.0, 2.0]}})
  with pytest.raises(ValueError, match="structure must be"):
    export.save_sparse(path, {"l": {"w": np.zeros((4, 4))}}, structure="4:2")
  assert path.read_bytes() == before
  assert [p.name for p in tmp_path.iterdir()] == ["keep.ppsparse"]
