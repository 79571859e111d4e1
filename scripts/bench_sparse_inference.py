"""Inference latency and memory of pruned MLPs: sparse kernels against dense, same run.

  python scripts/bench_sparse_inference.py [--out results/sparse_inference] [--width 2048]
      [--sparsities 0,0.9,0.95,0.99,0.999] [--batches 1,256] [--min-time 0.2]

Models: LeNet-300-100 (784-300-100-10) and a wide MLP (W-W-W-10, input W; --width, default
2048). Every kernel is pruned to the sparsity at random (uniform per layer, biases dense)
and run through ``sparse_inference.mlp_apply`` three ways, each jitted: dense kernels,
BCOO kernels ``[in, out]`` (the bcoo_dot_general ``sparse_apply`` gives a Haiku model)
and BCSR kernels stored transposed. Latency is the median of repeats after a warm-up call, the three
paths timed in interleaved rounds of ~5 ms samples (see ``median_seconds``). The break-even
is the lowest sparsity of the grid from which on a sparse format is at least as fast as
dense (none: slower everywhere on the grid). Memory: bytes of the kernels' buffers (values
+ indices [+ indptr]) against the dense kernels; biases are the same in both. Writes
bench.json and bench.csv under --out and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from powerprop_jax import sparse_inference as si

FORMATS = ("bcoo", "bcsr")


def random_mlp(sizes: list[int], sparsity: float, seed: int = 0) -> dict[str, Any]:
  """Haiku-style MLP params with round((1 - sparsity) n) non-zeros per kernel, at random."""
  rng = np.random.default_rng(seed)
  params = {}
  for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    w = (rng.standard_normal((fan_in, fan_out), np.float32) / np.sqrt(fan_in)).ravel()
    w[rng.permutation(w.size)[:int(round(sparsity * w.size))]] = 0.0
    params[f"mlp/~/linear_{i}"] = {"w": w.reshape(fan_in, fan_out),
                                   "b": rng.standard_normal(fan_out, np.float32) * 0.01}
  return params


def median_seconds(fns: dict[str, Callable[[], Any]], min_time: float
                   ) -> tuple[dict[str, Any], dict[str, float], int]:
  """(first outputs, median seconds per call, rounds) of each ``fn()``, blocked on results.

  One warm-up (compiling) call each, then rounds that time every fn in turn, so a change
  of machine load hits all of them alike; a sample is ``k`` back-to-back calls, ``k`` chosen
  from a second warm call so that a sample lasts about 5 ms. At least 5 rounds and
  ``min_time`` seconds of the slowest fn, but only 3 rounds when one call takes over a
  second; at most 200.
  """
  outputs = {name: jax.block_until_ready(fn()) for name, fn in fns.items()}
  calls = {}
  for name, fn in fns.items():
    start = time.perf_counter()
    jax.block_until_ready(fn())
    calls[name] = int(np.clip(5e-3 / max(time.perf_counter() - start, 1e-7), 1, 100))
  times: dict[str, list[float]] = {name: [] for name in fns}
  while True:
    for name, fn in fns.items():
      start = time.perf_counter()
      for _ in range(calls[name]):
        out = fn()
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - start) / calls[name])
    rounds = len(times[next(iter(fns))])
    slowest = max(sum(t) * calls[n] for n, t in times.items())
    if rounds >= 200 or (rounds >= 5 and slowest >= min_time) or (
        rounds >= 3 and slowest / rounds > 1.0):
      return outputs, {n: statistics.median(t) for n, t in times.items()}, rounds


def bench_cell(model: str, sizes: list[int], sparsity: float, batches: list[int],
               min_time: float) -> list[dict[str, Any]]:
  params = random_mlp(sizes, sparsity)
  kernels = {"dense": jax.tree_util.tree_map(jnp.asarray, params)}
  kernels.update({fmt: si.to_sparse(params, fmt) for fmt in FORMATS})
  apply = jax.jit(si.mlp_apply)
  rows = []
  for batch in batches:
    x = jnp.asarray(np.random.default_rng(1).standard_normal((batch, sizes[0]), np.float32))
    outputs, seconds, repeats = median_seconds(
        {name: (lambda k=k: apply(k, x)) for name, k in kernels.items()}, min_time)
    row = {"model": model, "batch": batch, "sparsity": sparsity, "repeats": repeats,
           "dense_ms": seconds["dense"] * 1e3, "dense_bytes": si.dense_bytes(kernels["dense"])}
    for fmt in FORMATS:
      np.testing.assert_allclose(outputs[fmt], outputs["dense"], rtol=1e-4, atol=1e-4)
      row.update({f"{fmt}_ms": seconds[fmt] * 1e3, f"{fmt}_ratio": seconds[fmt] / seconds["dense"],
                  f"{fmt}_bytes": si.sparse_bytes(kernels[fmt])})
    rows.append(row)
  return rows


def break_even(rows: list[dict[str, Any]], fmt: str) -> dict[tuple[str, int], float | None]:
  """{(model, batch): lowest grid sparsity from which ``fmt`` is never slower than dense}."""
  out: dict[tuple[str, int], float | None] = {}
  for key in sorted({(r["model"], r["batch"]) for r in rows}):
    cells = sorted((r for r in rows if (r["model"], r["batch"]) == key),
                   key=lambda r: r["sparsity"])
    found = None
    for r in reversed(cells):
      if r[f"{fmt}_ratio"] > 1.0:
        break
      found = r["sparsity"]
    out[key] = found
  return out


def table(rows: list[dict[str, Any]]) -> str:
  head = (f"{'model':<14}{'batch':>6}{'sparsity':>9}{'dense ms':>10}{'bcoo ms':>10}"
          f"{'bcoo/dense':>11}{'bcsr ms':>10}{'bcsr/dense':>11}{'dense MB':>10}{'bcoo MB':>9}"
          f"{'bcsr MB':>9}")
  lines = [head, "-" * len(head)]
  for r in rows:
    lines.append(f"{r['model']:<14}{r['batch']:>6}{r['sparsity'] * 100:>8.1f}%"
                 f"{r['dense_ms']:>10.3f}{r['bcoo_ms']:>10.3f}{r['bcoo_ratio']:>11.2f}"
                 f"{r['bcsr_ms']:>10.3f}{r['bcsr_ratio']:>11.2f}{r['dense_bytes'] / 1e6:>10.3f}"
                 f"{r['bcoo_bytes'] / 1e6:>9.3f}{r['bcsr_bytes'] / 1e6:>9.3f}")
  lines.append("")
  for fmt in FORMATS:
    for (model, batch), s in break_even(rows, fmt).items():
      where = f"{s * 100:.1f}%" if s is not None else "none on the grid (slower everywhere)"
      lines.append(f"break-even {fmt} {model} batch {batch}: {where}")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="results/sparse_inference")
  parser.add_argument("--width", type=int, default=2048)
  parser.add_argument("--sparsities", default="0,0.9,0.95,0.99,0.999")
  parser.add_argument("--batches", default="1,256")
  parser.add_argument("--min-time", type=float, default=0.2)
  args = parser.parse_args()
  sparsities = [float(s) for s in args.sparsities.split(",")]
  batches = [int(b) for b in args.batches.split(",")]
  models = {"lenet-300-100": [784, 300, 100, 10],
            f"mlp-{args.width}x3": [args.width] * 4 + [10]}
  start = time.time()
  rows = []
  for model, sizes in models.items():
    for sparsity in sparsities:
      rows.extend(bench_cell(model, sizes, sparsity, batches, args.min_time))
      print(f"  {model} {sparsity:.3f} done ({time.time() - start:.0f} s)", flush=True)
  print(table(rows))
  os.makedirs(args.out, exist_ok=True)
  environment = {"jax": jax.__version__, "backend": jax.default_backend(),
                 "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
                 "machine": platform.machine(), "seconds": time.time() - start}
  summary = {"environment": environment, "args": vars(args), "rows": rows,
             "break_even": {fmt: [{"model": m, "batch": b, "sparsity": s}
                                  for (m, b), s in break_even(rows, fmt).items()]
                            for fmt in FORMATS}}
  with open(os.path.join(args.out, "bench.json"), "w") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(args.out, "bench.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  print(f"wrote {args.out}/bench.json and bench.csv ({time.time() - start:.0f} s)")


if __name__ == "__main__":
  main()
