"""ResNet-50 train-step throughput: dense vs Powerpropagation vs Powerpropagation + masks.

  python scripts/bench_resnet.py [--batch 8] [--image_size 64] [--steps 5] [--rounds 3]

Each variant is one jitted train step of the library's loop (forward, backward, SGD+Nesterov
update, sparsity method in the optimizer state) on ``hk.nets.ResNet50``; variants are timed
round-robin in the same run and reported as images/sec and as the ratio of step time to the
dense step (target: <= 1.05 for powerprop, <= 1.10 with masks, RigL/Top-KAST mask updates
every 100 steps amortised: a plain step plus 1/100 of the extra cost of an update step), and
in bf16 compute (``model.compute_dtype``). The model FLOPs of a step (forward and backward,
``train.model_flops``: XLA's cost analysis, the same for every variant of one model) over the
step time give model TFLOP/s; on an accelerator, as a fraction of its bf16 peak (MFU, as
the training log's ``device_utilisation``), so a variant's overhead shows as a lower MFU.
It also times the input side alone (gather + on-device crop/flip of a mock in-memory batch),
to show whether data or compute bounds a run. Use a GPU/TPU for meaningful absolute numbers.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import flops as flops_lib
from powerprop_jax.experiment import train
from powerprop_jax.experiment.data import Dataset
from powerprop_jax.experiment.data import augment as augment_lib
from powerprop_jax.experiment.data import base as data_base

UPDATE_EVERY = 100
# name -> (alpha, method, mask update every k steps, compute dtype); "*@update" times the
# mask-update step.
VARIANTS = {
    "dense": (1.0, "none", 0, "float32"),
    "powerprop": (4.0, "none", 0, "float32"),
    "powerprop+topkast90": (4.0, "topkast", 10**6, "float32"),
    "powerprop+topkast90@update": (4.0, "topkast", 1, "float32"),
    "powerprop+rigl90": (4.0, "rigl", 10**6, "float32"),
    "powerprop+rigl90@update": (4.0, "rigl", 1, "float32"),
    "dense_bf16": (1.0, "none", 0, "bfloat16"),
    "powerprop_bf16": (4.0, "none", 0, "bfloat16"),
}


def _config(alpha: float, method: str, every: int, dtype: str, model: str = "resnet50"
            ) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.alpha = alpha
  c.model.update({"name": model, "num_classes": 1000, "compute_dtype": dtype})
  c.train.steps = 10**6
  c.optimizer.update({"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4})
  c.sparsity.method = method
  if method != "none":
    c.sparsity.update({"level": 0.9, "distribution": "erk", "dense_layers": "first",
                       "update_every": every, "end_step": 10**6})
  return c


def _timed(fn, state, batch):
  t0 = time.perf_counter()
  state, _ = fn(state, batch)
  jax.block_until_ready(state)
  return state, time.perf_counter() - t0


def bench_model(batch_size: int, image_size: int, steps: int, rounds: int,
                model: str = "resnet50") -> dict:
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(batch_size, image_size, image_size, 3)),
                                jnp.float32),
           "label": jnp.asarray(rng.integers(0, 1000, batch_size), jnp.int32)}
  runs, flops = {}, {}
  for name, (alpha, method, every, dtype) in VARIANTS.items():
    exp = train.build_experiment(_config(alpha, method, every, dtype, model),
                                 np.asarray(batch["image"][:1]))
    step = jax.jit(train.make_train_step(exp.model, exp.tx, exp.reparam), donate_argnums=0)
    flops[name] = train.model_flops(exp.model, exp.init_state, batch_size,
                                    np.asarray(batch["image"][:1]))
    state, _ = _timed(step, exp.init_state, batch)  # compile
    runs[name] = [step, state, []]
    print(f"compiled {name}", flush=True)
  for _ in range(rounds):
    for name, run in runs.items():
      total = 0.0
      for _ in range(steps):
        run[1], dt = _timed(run[0], run[1], batch)
        total += dt
      run[2].append(total / steps)
  t = {name: float(np.median(times)) for name, (_, _, times) in runs.items()}
  for name in [n for n in t if n + "@update" in t]:  # one update step per UPDATE_EVERY steps
    t[name] += (t.pop(name + "@update") - t[name]) / UPDATE_EVERY
  return {name: {"s_per_step": v, "images_per_s": batch_size / v, "ratio": v / t["dense"],
                 "tflops_per_s": flops[name] / v / 1e12}
          for name, v in t.items()}


def bench_input(batch_size: int, image_size: int, rounds: int = 20) -> float:
  """images/sec of the on-device input side: gather a batch from memory, crop and flip."""
  rng = np.random.default_rng(0)
  n = 8 * batch_size
  data = jax.device_put(Dataset(rng.normal(size=(n, image_size, image_size, 3)).astype(
      np.float32), rng.integers(0, 1000, n).astype(np.int32)))
  aug = augment_lib.get_augment("crop_flip")
  fn = jax.jit(lambda d, i, k: aug(k, data_base.gather_batch(d, i)))
  idx = data_base.batch_indices(0, 0, rounds + 1, batch_size, n)
  jax.block_until_ready(fn(data, idx[0], jax.random.PRNGKey(0)))
  t0 = time.perf_counter()
  for r in range(rounds):
    jax.block_until_ready(fn(data, idx[r + 1], jax.random.PRNGKey(r)))
  return rounds * batch_size / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--model", default="resnet50",
                      help="resnet50, or resnet_tiny for a quick check of the script")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="bf16 peak of the device (default: looked up from its name)")
  parser.add_argument("--out", default="", help="optional JSON file for the results")
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}) x{jax.device_count()}; "
        f"{args.model}, batch {args.batch}, {args.image_size}x{args.image_size}", flush=True)
  results = bench_model(args.batch, args.image_size, args.steps, args.rounds, args.model)
  peak = args.peak_tflops or flops_lib.peak_tflops(device.device_kind)
  print(f"{'variant':28s} {'images/s':>10s} {'ratio':>7s} {'TFLOP/s':>8s} {'of peak':>8s}")
  for name, r in results.items():
    r["fraction_of_bf16_peak"] = r["tflops_per_s"] / peak if peak else None
    frac = f"{100 * r['fraction_of_bf16_peak']:7.1f}%" if peak else "     n/a"
    print(f"{name:28s} {r['images_per_s']:10.1f} {r['ratio']:7.3f} {r['tflops_per_s']:8.3f} "
          f"{frac}")
  if not peak:
    print(f"no bf16 peak known for {device.device_kind!r} (pass --peak_tflops): fraction of "
          "peak not reported")
  pipeline = bench_input(args.batch, args.image_size)
  print(f"input side alone (gather + crop/flip): {pipeline:.0f} images/s")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"model": results, "input_images_per_s": pipeline, "args": vars(args)}, f,
                indent=2)


if __name__ == "__main__":
  main()
