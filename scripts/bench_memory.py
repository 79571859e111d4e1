"""How many microbatches the published ImageNet recipe (global batch 4096) needs per slice.

  python scripts/bench_memory.py [--batches 16,32,64] [--image_size 224] [--out FILE.json]

Compiles (does not run) the library's ResNet-50 train step (bf16 compute, Powerprop +
Top-KAST 90%, SGD + Nesterov: the ``topkast90_pp`` row) for one device at a few per-device
batch sizes and reads XLA's ``compiled.memory_analysis()``: the bytes of arguments (params,
optimizer state, masks, batch) + temporaries (activations, gradients) - donated aliases.
Memory is affine in the batch (fixed + per-image * b): fitted from the batches compiled, it
gives, for each common slice, the largest per-device microbatch that fits in the device's
memory (10% kept free) and so ``train.microbatches`` = ceil(per-device batch / that).
Compiled by XLA:CPU here, these are estimates: the GPU and TPU compilers fuse and
rematerialise differently (usually using less), so the table is an upper bound to be
checked with the same script on the accelerator (``--batches`` around the predicted size).
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import train

GLOBAL_BATCH = 4096
# (slice, devices, bytes of memory per device)
SLICES = (("1 GPU (80 GB)", 1, 80e9), ("8 x A100 40 GB", 8, 40e9),
          ("8 x A100/H100 80 GB", 8, 80e9), ("TPU v3-8 (16 GB per core)", 8, 16e9),
          ("TPU v4-32 (16 chips, 32 GB each)", 16, 32e9))
HEADROOM = 0.9   # use at most 90% of a device's memory


def _config(image_size: int):
  c = config_lib.base()
  c.alpha = 1.25
  c.model.update({"name": "resnet50", "num_classes": 1000, "compute_dtype": "bfloat16"})
  c.data.update({"name": "imagenet2012", "image_size": image_size})
  c.train.steps = 32_000
  c.optimizer.update({"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4})
  c.sparsity.update({"method": "topkast", "level": 0.9, "dense_layers": "first,last",
                     "update_every": 1, "end_step": 32_000})
  return c


def step_bytes(batch: int, image_size: int) -> dict:
  """XLA's memory analysis of one compiled train step at per-device batch ``batch``."""
  exp = train.build_experiment(_config(image_size),
                               np.zeros((1, image_size, image_size, 3), np.float32))
  step = jax.jit(train.make_train_step(exp.model, exp.tx, exp.reparam), donate_argnums=0)
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  state = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                 exp.init_state)
  m = step.lower(state, {"image": images, "label": labels}).compile().memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return {"batch": batch, "arguments": m.argument_size_in_bytes,
          "temporaries": m.temp_size_in_bytes, "outputs": m.output_size_in_bytes,
          "aliased": m.alias_size_in_bytes, "total": total}


def plan(rows: list[dict]) -> tuple[float, float, list[dict]]:
  """(fixed bytes, bytes per image, one row per slice) from a least-squares affine fit."""
  b = np.array([r["batch"] for r in rows], float)
  total = np.array([r["total"] for r in rows], float)
  per_image, fixed = np.polyfit(b, total, 1)
  out = []
  for name, devices, memory in SLICES:
    per_device = GLOBAL_BATCH // devices
    fits = int((HEADROOM * memory - fixed) // per_image)
    micro = math.ceil(per_device / fits) if fits > 0 else None
    while micro is not None and per_device % micro:   # microbatches split the batch evenly
      micro += 1
    out.append({"slice": name, "devices": devices, "per_device_batch": per_device,
                "max_microbatch": fits, "microbatches": micro,
                "estimated_gb": (fixed + per_image * per_device / (micro or 1)) / 1e9})
  return fixed, per_image, out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batches", default="16,32,64")
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--out", default="")
  args = p.parse_args()
  rows = []
  for b in (int(x) for x in args.batches.split(",")):
    rows.append(step_bytes(b, args.image_size))
    print(f"batch {b}: {rows[-1]['total'] / 1e9:.2f} GB (arguments "
          f"{rows[-1]['arguments'] / 1e9:.2f}, temporaries {rows[-1]['temporaries'] / 1e9:.2f})",
          flush=True)
  fixed, per_image, slices = plan(rows)
  print(f"fit: {fixed / 1e9:.2f} GB fixed + {per_image / 1e6:.1f} MB per image "
        f"(compiled by XLA:{jax.default_backend().upper()}: an estimate)")
  print("| slice | per-device batch | largest microbatch | train.microbatches | GB per device |")
  print("|---|---|---|---|---|")
  for s in slices:
    print(f"| {s['slice']} | {s['per_device_batch']} | {s['max_microbatch']} | "
          f"{s['microbatches']} | {s['estimated_gb']:.1f} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"backend": jax.default_backend(), "steps": rows, "fixed_bytes": fixed,
                 "bytes_per_image": per_image, "slices": slices}, f, indent=1)


if __name__ == "__main__":
  main()
