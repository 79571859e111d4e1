"""On-device image augmentation: ``augment(rng, batch) -> batch``, jit-able, per example.

``random_crop_flip``: pad H and W by ``pad`` pixels (zeros), take a random HxW crop
(offsets uniform in [0, 2*pad]) and flip left-right with probability 1/2; the standard
CIFAR-10 augmentation. Labels pass through unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]


def crop_flip_one(image: jax.Array, dy: jax.Array, dx: jax.Array, flip: jax.Array,
                  pad: int) -> jax.Array:
  """image (H, W, C); crop offsets dy, dx in [0, 2*pad]; flip bool -> (H, W, C)."""
  h, w, c = image.shape
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  out = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))
  return jnp.where(flip, out[:, ::-1], out)


def random_crop_flip(rng: jax.Array, batch: Batch, pad: int = 4) -> Batch:
  """batch["image"] (B, H, W, C) -> same shape, randomly cropped (pad ``pad``) and flipped."""
  if pad < 0:
    raise ValueError(f"pad must be >= 0, got {pad}")
  images = batch["image"]
  b = images.shape[0]
  k_off, k_flip = jax.random.split(rng)
  offsets = jax.random.randint(k_off, (b, 2), 0, 2 * pad + 1)
  flips = jax.random.bernoulli(k_flip, 0.5, (b,))
  out = jax.vmap(lambda im, o, f: crop_flip_one(im, o[0], o[1], f, pad))(images, offsets, flips)
  return {**batch, "image": out}


AUGMENTATIONS = {"none": None, "crop_flip": random_crop_flip}


def get_augment(name: str):
  """The augment function named ``name`` (``none`` -> None)."""
  if name not in AUGMENTATIONS:
    raise ValueError(f"train.augment must be one of {sorted(AUGMENTATIONS)}, got {name!r}")
  return AUGMENTATIONS[name]
