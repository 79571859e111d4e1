"""A compact, pickle-free file for trained (pruned) weights: ``save_sparse`` / ``load_sparse``.

Format version 1 ("powerprop_jax sparse"), so that any language can read it. All integers
are little-endian.

File layout::

  offset   bytes  field
  0        8      magic b"PPJXSPRS"
  8        4      format version, uint32 (1)
  12       4      H, header length, uint32
  16       8      P, payload length, uint64
  24       4      CRC-32 (zlib.crc32) of the header bytes followed by the payload
  28       H      header: zlib-compressed UTF-8 JSON (below)
  28 + H   P      payload: the arrays' bytes back to back (offsets are payload-relative)

The file ends at 28 + H + P. Header JSON::

  {"format": "powerprop_jax.sparse", "format_version": 1,
   "powerprop_jax_version": "0.2.0", "structure": "2:4" or "",
   "tree": nested objects mirroring the params dict; each leaf is an index into "leaves",
   "leaves": [{"path": [keys...], "shape": [...], "dtype": "float32",
               "source_dtype": "float32",      (only when values_dtype cast the leaf)
               "encoding": "dense" | "bitmask" | "delta" | "nm",
               "nnz": non-zeros, "sparsity": 1 - nnz / size,
               "values": [offset, nbytes], "positions": [offset, nbytes],  (not for dense)
               "width": bits per position (delta, nm), "n": N, "m": M (nm)}, ...],
   "user": the caller's metadata (any JSON) or null}

dtype is one of bool, int8/16/32/64, uint8/16/32/64, float16/32/64, bfloat16 (1 sign,
8 exponent, 7 mantissa bits); every element is stored as its little-endian bytes. A
"zero" is an element whose bytes are all zero, so -0.0 and NaN payloads are kept exactly.
Leaves are row-major (C order); ``size`` is the product of ``shape``. Encodings:

* dense: ``values`` holds all ``size`` elements.
* bitmask: ``values`` holds the ``nnz`` non-zeros in row-major order; ``positions`` is one
  bit per element, 1 = non-zero, most significant bit first (``np.packbits``), zero-padded
  to ceil(size / 8) bytes.
* delta: ``values`` as for bitmask; ``positions`` holds ``nnz`` gaps g_k, each an unsigned
  ``width``-bit integer, most significant bit first, packed back to back and zero-padded to
  ceil(nnz * width / 8) bytes; the flat index of the k-th non-zero is i_0 = g_0 and
  i_k = i_{k-1} + g_k + 1. (``width`` is the bit length of the largest gap, at least 1.)
* nm: an N:M kernel of shape [..., I, O] (:mod:`powerprop_jax.structured`) seen as
  [..., I / M, M, O]; ``values`` has shape [..., I / M, N, O] (row-major), the N kept
  elements of each group of M along axis -2; ``positions`` holds their in-group indices in
  [0, M), ascending within a group, in the same order, as ``width`` = bit length of M - 1
  bits each, packed as for delta. The leaf is zero except leaf[..., g M + p, o] = value.

A leaf is stored in the smallest of dense, bitmask and delta, except that with
``structure="N:M"`` every leaf that fits the pattern (ndim >= 2, I divisible by M, at most
N non-zeros per group) is stored as nm. The file is written to a temporary file and
renamed over ``path``; nothing is pickled.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from typing import Any, Mapping, Optional

import jax.numpy as jnp
import numpy as np

from powerprop_jax import checks
from powerprop_jax import structured

MAGIC = b"PPJXSPRS"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sIIQI")
ENCODINGS = ("dense", "bitmask", "delta", "nm")
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name) for name in ("bool", "int8", "int16", "int32", "int64", "uint8",
                                      "uint16", "uint32", "uint64", "float16", "float32",
                                      "float64")}
DTYPES["bfloat16"] = np.dtype(jnp.bfloat16)
VALUES_DTYPES = (None, "bfloat16")
_FLOATS = ("float16", "float32", "float64", "bfloat16")


class SparseFormatError(checks.UserError):
  """A file that is not a readable powerprop_jax sparse file (the message names it)."""


def _bits(x: np.ndarray) -> np.ndarray:
  """The elements' bytes as native unsigned integers of the same width (bit-exact view)."""
  return np.ascontiguousarray(x).view(f"u{x.dtype.itemsize}").reshape(x.shape)


_CHUNK = 1 << 20  # elements per packing pass (a multiple of 8: chunks end on a byte)


def _pack(x: np.ndarray, width: int) -> bytes:
  """Unsigned ints < 2**width, ``width`` bits each, MSB first, zero-padded to a byte."""
  shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
  return b"".join(
      np.packbits(((x[i:i + _CHUNK].astype(np.uint64)[:, None] >> shifts) & 1).astype(np.uint8)
                  ).tobytes() for i in range(0, x.size, _CHUNK))


def _unpack(buf: bytes, width: int, count: int) -> np.ndarray:
  """Inverse of :func:`_pack`: ``count`` uint64 values."""
  if width < 1 or len(buf) != -(-count * width // 8):
    raise ValueError(f"{len(buf)} bytes of positions for {count} x {width} bits")
  raw = np.frombuffer(buf, np.uint8)
  shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
  out = np.empty(count, np.uint64)
  for i in range(0, count, _CHUNK):
    k = min(_CHUNK, count - i)
    bits = np.unpackbits(raw[i * width // 8:], count=k * width).reshape(k, width)
    out[i:i + k] = (bits.astype(np.uint64) << shifts).sum(axis=1, dtype=np.uint64)
  return out


def _le(bits: np.ndarray) -> bytes:
  return bits.astype(bits.dtype.newbyteorder("<")).tobytes()


def _nm_fits(bits: np.ndarray, nm: Optional[tuple[int, int]]) -> bool:
  if nm is None or bits.ndim < 2 or bits.shape[-2] % nm[1]:
    return False
  return int(structured.group_counts(bits, nm[1]).max(initial=0)) <= nm[0]


def _encode(x: np.ndarray, nm: Optional[tuple[int, int]]) -> tuple[dict[str, Any], list[bytes]]:
  """One leaf -> (header entry without offsets, [values bytes, positions bytes])."""
  bits = _bits(x)
  flat = bits.reshape(-1)
  nz = flat != 0
  nnz, size, item = int(nz.sum()), flat.size, x.dtype.itemsize
  entry = {"nnz": nnz, "sparsity": 1.0 - nnz / size if size else 0.0}
  if _nm_fits(bits, nm):
    n, m = nm
    values, positions = structured.nm_compress(bits, n, m)
    width = max(1, (m - 1).bit_length())
    entry.update(encoding="nm", width=width, n=n, m=m)
    return entry, [_le(values), _pack(positions.reshape(-1), width)]
  index = np.flatnonzero(nz)
  gaps = np.diff(index, prepend=-1) - 1
  width = max(1, int(gaps.max(initial=0)).bit_length())
  sizes = {"dense": size * item, "bitmask": nnz * item + -(-size // 8),
           "delta": nnz * item + -(-nnz * width // 8)}
  encoding = min(sizes, key=sizes.get)
  entry["encoding"] = encoding
  if encoding == "dense":
    return entry, [_le(flat)]
  if encoding == "bitmask":
    return entry, [_le(flat[nz]), np.packbits(nz).tobytes()]
  entry["width"] = width
  return entry, [_le(flat[nz]), _pack(gaps, width)]


def _json_default(obj: Any) -> Any:
  if isinstance(obj, (np.generic, np.ndarray)):
    return obj.tolist()
  raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _flatten(tree: Any, path: tuple[str, ...], leaves: list) -> Any:
  """Nested mappings -> a JSON tree of leaf indices; appends (path, array) to ``leaves``."""
  if isinstance(tree, Mapping):
    out = {}
    for key, sub in tree.items():
      if not isinstance(key, str):
        raise ValueError(f"save_sparse needs string keys, got {key!r} at {'/'.join(path)!r}")
      out[key] = _flatten(sub, path + (key,), leaves)
    return out
  if isinstance(tree, (list, tuple)) or tree is None:
    raise ValueError(f"save_sparse needs a nested dict of arrays; got a "
                     f"{type(tree).__name__} at {'/'.join(path)!r}")
  x = np.asarray(tree)
  if x.dtype.name not in DTYPES:
    raise ValueError(f"leaf {'/'.join(path)!r} has dtype {x.dtype}; supported: "
                     f"{sorted(DTYPES)}")
  leaves.append((path, x))
  return len(leaves) - 1


def _write_atomic(path: str, data: bytes) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def save_sparse(path: str | os.PathLike, params: Mapping[str, Any], *,
                values_dtype: Optional[str] = None, structure: str = "",
                metadata: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """Writes ``params`` (nested mappings of arrays: Haiku, Flax linen, FrozenDict) to ``path``.

  Args:
    values_dtype: None keeps every dtype (bit-exact round trip); "bfloat16" casts the
      floating-point leaves to bfloat16 first (round to nearest even).
    structure: "N:M" stores the leaves that fit that pattern in the nm layout.
    metadata: JSON-serialisable dict (e.g. the run config), returned by :func:`load_sparse`.

  Returns a summary: ``file_bytes``, ``dense_bytes`` (the leaves as given),
  ``values_bytes`` (the stored non-zeros alone), ``sparsity`` (zeros over all elements) and
  ``layers``: {"/"-joined path: {shape, dtype, encoding, sparsity, bytes}}.
  """
  if values_dtype not in VALUES_DTYPES:
    raise ValueError(f"values_dtype must be one of {VALUES_DTYPES}, got {values_dtype!r}")
  nm = structured.parse_structure(structure)
  if not isinstance(params, Mapping):
    raise ValueError(f"save_sparse needs a nested dict of arrays, got {type(params).__name__}")
  leaves: list[tuple[tuple[str, ...], np.ndarray]] = []
  tree = _flatten(params, (), leaves)
  entries, chunks, offset, dense_bytes, values_bytes = [], [], 0, 0, 0
  for keys, x in leaves:
    entry = {"path": list(keys), "shape": list(x.shape)}
    dense_bytes += x.nbytes
    if values_dtype is not None and x.dtype.name in _FLOATS and x.dtype.name != values_dtype:
      entry["source_dtype"] = x.dtype.name
      x = x.astype(DTYPES[values_dtype])
    entry["dtype"] = x.dtype.name
    fields, data = _encode(x, nm)
    entry.update(fields)
    values_bytes += fields["nnz"] * x.dtype.itemsize
    for name, blob in zip(("values", "positions"), data):
      entry[name] = [offset, len(blob)]
      offset += len(blob)
      chunks.append(blob)
    entries.append(entry)
  from powerprop_jax import __version__  # (at call time: defined after the package's imports)
  header = {"format": "powerprop_jax.sparse", "format_version": FORMAT_VERSION,
            "powerprop_jax_version": __version__, "structure": structure.strip(),
            "tree": tree, "leaves": entries, "user": None if metadata is None else
            dict(metadata)}
  try:
    text = json.dumps(header, separators=(",", ":"), allow_nan=False, default=_json_default)
  except (TypeError, ValueError) as e:
    raise ValueError(f"save_sparse: metadata must be JSON-serialisable: {e}") from None
  head = zlib.compress(text.encode("utf-8"), 9)
  payload = b"".join(chunks)
  crc = zlib.crc32(payload, zlib.crc32(head))
  data = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(head), len(payload), crc) + head + payload
  _write_atomic(os.fspath(path), data)
  total = sum(x.size for _, x in leaves)
  return {"path": os.fspath(path), "file_bytes": len(data), "dense_bytes": dense_bytes,
          "values_bytes": values_bytes,
          "sparsity": 1.0 - sum(e["nnz"] for e in entries) / max(total, 1),
          "layers": _layers(entries)}


def _layers(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  return {"/".join(e["path"]): {"shape": tuple(e["shape"]), "dtype": e["dtype"],
                                "encoding": e["encoding"], "sparsity": e["sparsity"],
                                "bytes": sum(e[k][1] for k in ("values", "positions")
                                             if k in e)}
          for e in entries}


def _chunk(payload: bytes, span: list[int]) -> bytes:
  start, length = (int(v) for v in span)
  if start < 0 or length < 0 or start + length > len(payload):
    raise ValueError(f"array span {span} outside the {len(payload)}-byte payload")
  return payload[start:start + length]


def _values(payload: bytes, entry: dict[str, Any], dtype: np.dtype, count: int) -> np.ndarray:
  blob = _chunk(payload, entry["values"])
  if len(blob) != count * dtype.itemsize:
    raise ValueError(f"{len(blob)} value bytes for {count} {dtype.name} elements")
  little = np.dtype(f"<u{dtype.itemsize}")
  return np.frombuffer(blob, little).astype(little.newbyteorder("="))


def _decode(payload: bytes, entry: dict[str, Any]) -> np.ndarray:
  """One header entry -> the leaf array."""
  dtype = DTYPES[entry["dtype"]]
  shape = tuple(int(d) for d in entry["shape"])
  size, nnz, encoding = int(np.prod(shape, dtype=np.int64)), int(entry["nnz"]), entry["encoding"]
  if encoding not in ENCODINGS or not 0 <= nnz <= size:
    raise ValueError(f"leaf {entry['path']}: encoding {encoding!r} with {nnz} of {size}")
  if encoding == "dense":
    return _values(payload, entry, dtype, size).view(dtype).reshape(shape)
  positions = _chunk(payload, entry["positions"])
  if encoding == "nm":
    n, m, width = int(entry["n"]), int(entry["m"]), int(entry["width"])
    if structured.parse_structure(f"{n}:{m}") is None or len(shape) < 2 or shape[-2] % m:
      raise ValueError(f"leaf {entry['path']}: shape {shape} is not {n}:{m}")
    vshape = shape[:-2] + (shape[-2] // m, n, shape[-1])
    count = size // m * n
    index = _unpack(positions, width, count).astype(np.int64)
    if count and index.max() >= m:
      raise ValueError(f"leaf {entry['path']}: in-group index >= {m}")
    bits = structured.nm_decompress(_values(payload, entry, dtype, count).reshape(vshape),
                                    index.reshape(vshape), m)
    return bits.view(dtype).reshape(shape)
  values = _values(payload, entry, dtype, nnz)
  flat = np.zeros(size, values.dtype)
  if encoding == "bitmask":
    if len(positions) != -(-size // 8):
      raise ValueError(f"{len(positions)} mask bytes for {size} elements")
    nz = np.unpackbits(np.frombuffer(positions, np.uint8), count=size).astype(bool)
    if int(nz.sum()) != nnz:
      raise ValueError(f"leaf {entry['path']}: mask holds {int(nz.sum())} of {nnz} non-zeros")
    flat[nz] = values
  else:
    index = np.cumsum(_unpack(positions, int(entry["width"]), nnz) + np.uint64(1)) - np.uint64(1)
    if nnz and index[-1] >= size:
      raise ValueError(f"leaf {entry['path']}: index {index[-1]} past its {size} elements")
    flat[index.astype(np.int64)] = values
  return flat.view(dtype).reshape(shape)


def _build(tree: Any, leaves: list[np.ndarray]) -> Any:
  if isinstance(tree, dict):
    return {k: _build(v, leaves) for k, v in tree.items()}
  if isinstance(tree, bool) or not isinstance(tree, int):
    raise ValueError(f"tree leaf {tree!r} is not a leaf index")
  return leaves[tree]


def _read(path: str) -> tuple[Any, dict[str, Any]]:
  with open(path, "rb") as f:
    data = f.read()
  if data[:8] != MAGIC[:len(data)] or not data:
    raise ValueError(f"no {MAGIC!r} magic at the start")
  if len(data) < _PREAMBLE.size:
    raise ValueError(f"{len(data)} bytes, shorter than the {_PREAMBLE.size}-byte preamble")
  _, version, head_len, payload_len, crc = _PREAMBLE.unpack_from(data)
  if version != FORMAT_VERSION:
    raise ValueError(f"format version {version}; this reader reads version {FORMAT_VERSION}")
  if len(data) != _PREAMBLE.size + head_len + payload_len:
    raise ValueError(f"{len(data)} bytes, the preamble promises "
                     f"{_PREAMBLE.size + head_len + payload_len} (truncated or padded)")
  head = data[_PREAMBLE.size:_PREAMBLE.size + head_len]
  payload = data[_PREAMBLE.size + head_len:]
  if zlib.crc32(payload, zlib.crc32(head)) != crc:
    raise ValueError("CRC-32 mismatch (corrupted)")
  header = json.loads(zlib.decompress(head).decode("utf-8"))
  if header.get("format") != "powerprop_jax.sparse":
    raise ValueError(f"header format {header.get('format')!r}")
  leaves = [_decode(payload, e) for e in header["leaves"]]
  metadata = {"format_version": version,
              "powerprop_jax_version": header["powerprop_jax_version"],
              "structure": header["structure"], "layers": _layers(header["leaves"]),
              "user": header["user"]}
  return _build(header["tree"], leaves), metadata


def load_sparse(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a file written by :func:`save_sparse`: ``(params, metadata)``.

  ``params`` is the nested dict of NumPy arrays as saved (bfloat16 leaves stay bfloat16);
  ``metadata`` holds ``format_version``, ``powerprop_jax_version``, ``structure``,
  ``layers`` ({path: {shape, dtype, encoding, sparsity, bytes}}) and ``user`` (the dict
  given to ``save_sparse``, or None). Raises SparseFormatError, one line naming the file,
  for anything that is not an intact file of this format (FileNotFoundError as usual).
  """
  path = os.fspath(path)
  try:
    return _read(path)
  except (OSError, MemoryError):
    raise
  except Exception as e:  # any malformed content, whatever the parser tripped on
    reason = " ".join(str(e).split())
    if type(e) is not ValueError:
      reason = f"{type(e).__name__}: {reason}"
    raise SparseFormatError(f"{path}: not a readable powerprop_jax sparse file "
                            f"(format {FORMAT_VERSION}): {reason}") from None


def __getattr__(name: str) -> Any:
  """``load_run`` (a finished experiment run's model, pruned weights and config) lives in the
  harness, :mod:`powerprop_jax.experiment.export`; it is reached from here on first use only,
  so importing this module loads nothing of the harness."""
  if name in ("load_run", "LoadedRun"):
    from powerprop_jax.experiment import export as run_export  # pylint: disable=g-import-not-at-top
    return getattr(run_export, name)
  raise AttributeError(f"module 'powerprop_jax.export' has no attribute {name!r}")
