"""ImageNet train-input throughput: JPEG decode (draft mode), random-resized crop, flip, batch.

  python scripts/bench_input.py [--workers 0] [--batch 64] [--steps 20] [--out bench.json]

Runs the library's own train pipeline (``experiment.data.imagenet.train_batches``, the same
per-example code as on tfds ArrayRecord, fed from an in-memory record source; uint8 out, the
training loop normalises on the device) over 64 random-content JPEGs of ImageNet sizes
(500x375, 500x333, 375x500, ...; quality 90: random colour fields at three scales plus noise,
~105 KB each, near ImageNet's ~110 KB mean). Goal: >= 500 images/s per core at 224 px.

Reported: images/s per CPU core (one in-process thread, ``data.workers=0``,
``data.prefetch=0``: images / CPU seconds), and, with ``--workers W``, wall-clock images/s of
W grain worker processes. The number of cores that keep one accelerator busy is the
accelerator's training rate over the per-core rate. The default rate, 2375 images/s, is
ResNet-50 v1.5 training on one A100 40GB, mixed precision + XLA, batch 256, from NVIDIA
DeepLearningExamples, TensorFlow/Classification/ConvNets/resnet50v1.5/README.md ("Training
performance: NVIDIA DGX A100 (8x A100 40GB)"; 17400 images/s on 8 GPUs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time

import numpy as np
from PIL import Image

from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment.data import imagenet

SIZES = [(375, 500), (333, 500), (500, 375), (500, 500), (500, 333), (400, 500), (281, 500),
         (375, 500)]   # (height, width): the commonest ImageNet shapes
SOURCE = ("NVIDIA DeepLearningExamples TensorFlow/Classification/ConvNets/resnet50v1.5/README.md: "
          "ResNet-50 v1.5 training, 1x A100 40GB, mixed precision + XLA, batch 256")


def photo_like_jpeg(height: int, width: int, seed: int, quality: int = 90) -> bytes:
  """A JPEG of random colour fields at three scales (bicubic from 6x8, 24x32, 96x128 grids)
  plus N(0, 16) pixel noise: ~105 KB at ImageNet sizes, near ImageNet's ~110 KB mean."""
  rng = np.random.default_rng(seed)
  pixels = np.full((height, width, 3), 128.0, np.float32)
  for grid, weight in (((6, 8), 0.5), ((24, 32), 0.3), ((96, 128), 0.4)):
    small = Image.fromarray(rng.integers(0, 256, (*grid, 3), dtype=np.uint8))
    pixels += weight * (np.asarray(small.resize((width, height), Image.Resampling.BICUBIC),
                                   np.float32) - 128)
  pixels = np.clip(pixels + rng.normal(0, 16, pixels.shape), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
  return buf.getvalue()


class JpegSource:
  """Record source over in-memory JPEGs: record i is {"image": bytes, "label": i % 1000}."""

  def __init__(self, jpegs: list[bytes]):
    self.jpegs = jpegs

  def __len__(self) -> int:
    return len(self.jpegs)

  def __getitem__(self, i: int) -> dict:
    return {"image": self.jpegs[i], "label": i % 1000}


def run(source: JpegSource, workers: int, prefetch: int, batch: int, steps: int,
        image_size: int) -> dict[str, float]:
  """Wall and this process's CPU seconds for ``steps`` batches after one warm-up batch."""
  c = config_lib.base().data
  c.image_size, c.workers, c.prefetch = image_size, workers, prefetch
  it = imagenet.train_batches(c, batch, seed=0, start_step=0, process_index=0, process_count=1,
                              source=source)
  next(it)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    b = next(it)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  assert b["image"].shape == (batch, image_size, image_size, 3)
  if hasattr(it, "close"):
    it.close()
  return {"images": batch * steps, "wall_s": wall, "cpu_s": cpu}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workers", type=int, default=0, help="grain worker processes (0: only the "
                 "single-core measurement)")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--image_size", type=int, default=224)
  p.add_argument("--num_jpegs", type=int, default=64)
  p.add_argument("--accelerator_rate", type=float, default=2375.0,
                 help="images/s one accelerator trains at (default: " + SOURCE + ")")
  p.add_argument("--out", default="", help="write the results as JSON here")
  args = p.parse_args()

  jpegs = [photo_like_jpeg(*SIZES[i % len(SIZES)], seed=i) for i in range(args.num_jpegs)]
  source = JpegSource(jpegs)
  one = run(source, 0, 0, args.batch, args.steps, args.image_size)
  per_core = one["images"] / max(one["cpu_s"], 1e-9)
  result = {
      "num_jpegs": len(jpegs), "mean_jpeg_kb": float(np.mean([len(j) for j in jpegs]) / 1024),
      "image_size": args.image_size, "batch": args.batch, "steps": args.steps,
      "images_per_s_per_core": per_core,
      "images_per_s_one_thread_wall": one["images"] / one["wall_s"],
      "accelerator_rate": args.accelerator_rate, "accelerator_rate_source": SOURCE,
      "cores_per_accelerator": args.accelerator_rate / per_core,
      "cpu_count": os.cpu_count(),
  }
  if args.workers:
    many = run(source, args.workers, 2, args.batch, args.steps, args.image_size)
    result.update(workers=args.workers, images_per_s_workers=many["images"] / many["wall_s"],
                  images_per_s_per_worker=many["images"] / many["wall_s"] / args.workers)

  print(f"{len(jpegs)} JPEGs, mean {result['mean_jpeg_kb']:.0f} KB, -> {args.image_size}px "
        f"uint8 batches of {args.batch}")
  print(f"train pipeline: {per_core:.0f} images/s per CPU core "
        f"({result['images_per_s_one_thread_wall']:.0f} images/s wall, one thread)")
  if args.workers:
    print(f"{args.workers} workers: {result['images_per_s_workers']:.0f} images/s wall "
          f"({result['images_per_s_per_worker']:.0f} per worker; {os.cpu_count()} cores here)")
  print(f"one accelerator at {args.accelerator_rate:.0f} images/s needs "
        f"~{result['cores_per_accelerator']:.1f} such cores ({SOURCE})")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
