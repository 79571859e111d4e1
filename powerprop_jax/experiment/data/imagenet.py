"""ImageNet (``imagenet2012``) streamed from tfds ArrayRecord files through grain; no TensorFlow.

Records come from ``tfds.data_source("imagenet2012", split, data_dir)`` (random access, JPEG
bytes left undecoded) and are decoded with Pillow inside grain's map, optionally in worker
processes (``data.workers``: -1 = one per core the host can spare, :func:`resolve_workers`;
0 = in-process threads), ``data.prefetch`` batches ahead.

Train (Inception / torchvision ``RandomResizedCrop``): a box of area fraction U(0.08, 1) and
aspect ratio w/h = exp(U(log 3/4, log 4/3)), 10 attempts, then a centre crop of the whole
image clipped to that aspect range; the box is resized (bilinear) to ``image_size`` and
flipped left-right with probability 1/2. Eval: the shorter side resized to
``round(image_size * 256 / 224)`` and the centre ``image_size`` square kept. Both yield
uint8 (S, S, 3) images and int32 labels: 4x fewer bytes to the devices than float32; the
training loop maps each channel c to ``(x / 255 - MEAN[c]) / STD[c]`` on the device
(``base.normalise_uint8``; :func:`normalise` is the same on the host).
JPEGs are decoded (Pillow's ``draft`` mode) at the coarsest DCT scale of 1, 1/2, 1/4, 1/8
that keeps the crop at least ``image_size`` pixels on each side: much of the decode cost.

The sampler is indexed by the step (as ``base.batch_indices``): global stream position
``t = step * B + p * B/P + j`` is example ``epoch_permutation(seed, t // n, n)[t % n]``, and
process p of P reads positions ``[p * B/P, (p+1) * B/P)`` of every step's global batch. So
the processes' batches of a step make up exactly the one-process global batch, each epoch is
a permutation of the split, and a run resumed at step s reads what it would have read. The
crop and flip of position t are drawn from ``default_rng((TAG, seed, t))``: the same for any
number of workers and across resumes.

Corrupt images: a record that Pillow cannot decode is never fatal and never silent. It is
counted (:func:`corrupt_count`, per process: each grain worker counts its own; batches
prefetched but never consumed count too) and logged as a warning naming the record. In training the position takes the next decodable record of the
stream (positions t+1, t+2, ...; with the crop/flip draws of t), so batch shapes stay static
and the run stays deterministic; that record is then seen twice in the epoch. In evaluation
the example is dropped from the metric: zero image, ``mask`` False. More than
``MAX_CORRUPT_RUN`` undecodable records in a row raise a DataError (a damaged data set).

Preparing the data (the tfds build step itself needs TensorFlow; reading does not)::

  tfds build imagenet2012 --data_dir=DIR --manual_dir=DIR/downloads/manual \\
      --file_format=array_record
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import math
import os
import threading
from typing import Any, Iterator, Optional, Sequence

from absl import flags
import grain
import jax
import ml_collections
import numpy as np
from PIL import Image

from powerprop_jax.experiment.data.base import (IMAGENET_MEAN, IMAGENET_STD, DataError,
                                                epoch_permutation)

NAME = "imagenet2012"
MEAN = np.array(IMAGENET_MEAN, np.float32)
STD = np.array(IMAGENET_STD, np.float32)
AREA_RANGE = (0.08, 1.0)
RATIO_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
EVAL_RESIZE_RATIO = 256 / 224
MAX_CORRUPT_RUN = 100
_AUGMENT_TAG = 0x1A6E   # separates the per-example draws from the epoch permutations' seeds
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)

Box = tuple[int, int, int, int]   # (top, left, height, width) in pixels
Example = dict[str, np.ndarray]
RecordSource = Sequence[dict[str, Any]]   # len() and [i] -> {"image": JPEG bytes|uint8, "label"}

_log = logging.getLogger(__name__)
_corrupt_lock = threading.Lock()
_corrupt = [0]


def corrupt_count() -> int:
  """Undecodable records met so far by this process (grain workers count their own)."""
  return _corrupt[0]


def _count_corrupt() -> int:
  with _corrupt_lock:
    _corrupt[0] += 1
    return _corrupt[0]


# ----------------------------------------------------------------------------- data source

def _unprepared(data_dir: str, error: Exception) -> DataError:
  where = repr(data_dir) if data_dir else "the default tfds data_dir (~/tensorflow_datasets)"
  reason = (str(error).strip().splitlines() or [""])[0][:200]
  d = data_dir or "DIR"
  return DataError(
      f"{NAME} is missing or not prepared as ArrayRecord in {where} ({type(error).__name__}: "
      f"{reason}); build it from the manually downloaded archives with: tfds build {NAME} "
      f"--data_dir={d} --manual_dir={d}/downloads/manual --file_format=array_record")


def open_source(data_dir: str, split: str) -> RecordSource:
  """``tfds.data_source(imagenet2012, split)`` with images left as JPEG bytes.

  Where tfds cannot skip decoding (``tfds.testing.mock_data`` re-encodes through TensorFlow)
  the images arrive decoded as uint8 arrays, which the preprocessing also takes. Any failure
  to open is one DataError line saying how to prepare the data.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  open_ = functools.partial(tfds.data_source, NAME, split=split, data_dir=data_dir or None,
                            download=False)
  try:
    try:
      source = open_(decoders={"image": tfds.decode.SkipDecoding()})
      if len(source):
        source[0]  # pylint: disable=pointless-statement
    except ImportError:
      source = open_()
    if not len(source):
      raise ValueError(f"split {split!r} is empty")
  except Exception as e:  # tfds raises many types for a missing or unprepared set
    raise _unprepared(data_dir, e) from None
  return source


def check_prepared(data_dir: str) -> None:
  """Raises a one-line DataError unless the train and validation splits can be read."""
  for split in ("train", "validation"):
    open_source(data_dir, split)


def num_examples(data_dir: str, split: str) -> int:
  """The number of examples of ``split`` (e.g. 1281167 for train, 50000 for validation)."""
  return len(open_source(data_dir, split))


def check_process_batch(global_batch: int, process_count: int) -> int:
  """The per-process batch ``global_batch / process_count``; DataError unless it divides."""
  if global_batch < 1 or process_count < 1 or global_batch % process_count:
    raise DataError(f"global batch {global_batch} must be a positive multiple of the number of "
                    f"processes {process_count}; change train.batch_size/eval_batch_size")
  return global_batch // process_count


# ----------------------------------------------------------------------------- preprocessing

def sample_crop_box(rng: np.random.Generator, height: int, width: int,
                    area_range: tuple[float, float] = AREA_RANGE,
                    ratio_range: tuple[float, float] = RATIO_RANGE,
                    attempts: int = CROP_ATTEMPTS) -> tuple[Box, bool]:
  """((top, left, h, w), fallback) of an Inception-style random-resized crop.

  Each attempt draws area a ~ U(area_range) * H * W and ratio r = w / h with log r ~
  U(log ratio_range); w = round(sqrt(a r)), h = round(sqrt(a / r)); the first box that fits
  is placed uniformly. After ``attempts`` misses (``fallback`` True): the centred largest box
  whose aspect ratio is clipped to ``ratio_range``.
  """
  area = height * width
  log_lo, log_hi = math.log(ratio_range[0]), math.log(ratio_range[1])
  for _ in range(attempts):
    target = area * rng.uniform(*area_range)
    ratio = math.exp(rng.uniform(log_lo, log_hi))
    w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
    if 0 < w <= width and 0 < h <= height:
      top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
      return (top, left, h, w), False
  in_ratio = width / height
  if in_ratio < ratio_range[0]:
    w, h = width, min(height, max(1, round(width / ratio_range[0])))
  elif in_ratio > ratio_range[1]:
    w, h = min(width, max(1, round(height * ratio_range[1]))), height
  else:
    w, h = width, height
  return ((height - h) // 2, (width - w) // 2, h, w), True


def augment_params(seed: int, position: int, height: int, width: int) -> tuple[Box, bool]:
  """(crop box, flip) of stream position ``position``: a pure function of its arguments."""
  rng = np.random.default_rng((_AUGMENT_TAG, seed, position))
  box, _ = sample_crop_box(rng, height, width)
  return box, bool(rng.random() < 0.5)


def eval_box(height: int, width: int, size: int) -> tuple[float, float, float, float]:
  """(top, left, side, side): the centre ``size`` square after the shorter side -> 256/224 size.

  In source pixels the square has side ``min(H, W) * size / round(size * 256 / 224)``.
  """
  side = min(height, width) * size / round(size * EVAL_RESIZE_RATIO)
  return (height - side) / 2, (width - side) / 2, side, side


def open_image(image: Any) -> Image.Image:
  """A (lazily decoded) PIL image from JPEG/PNG bytes or an already decoded uint8 array."""
  if isinstance(image, (bytes, bytearray, memoryview)):
    return Image.open(io.BytesIO(image))
  array = np.asarray(image)
  if array.dtype.kind in "SO":   # a bytes scalar in a numpy wrapper
    return Image.open(io.BytesIO(array.item()))
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.dtype != np.uint8 or array.ndim not in (2, 3):
    raise ValueError(f"image must be encoded bytes or uint8 (H, W[, C]), got {array.dtype} "
                     f"{array.shape}")
  return Image.fromarray(array)


def crop_resize(image: Image.Image, box: tuple[float, float, float, float], size: int
                ) -> np.ndarray:
  """uint8 (size, size, 3): source box (top, left, h, w) resized bilinearly to size x size.

  JPEGs are decoded at the coarsest DCT scale (1/2, 1/4, 1/8) that keeps the box >= size.
  """
  top, left, h, w = box
  width, height = image.size
  image.draft("RGB", (math.ceil(width * size / w), math.ceil(height * size / h)))
  sx, sy = image.size[0] / width, image.size[1] / height
  if image.mode != "RGB":
    image = image.convert("RGB")
  out = image.resize((size, size), Image.Resampling.BILINEAR,
                     box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))
  return np.asarray(out, np.uint8)


def normalise(images: np.ndarray) -> np.ndarray:
  """uint8 (..., 3) -> float32 (..., 3): ``(x / 255 - MEAN) / STD`` per channel."""
  return ((images.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)


def train_image(image: Any, seed: int, position: int, size: int) -> np.ndarray:
  """uint8 (size, size, 3): random-resized crop and flip of one image (normalised later)."""
  img = open_image(image)
  box, flip = augment_params(seed, position, img.size[1], img.size[0])
  out = crop_resize(img, box, size)
  return np.ascontiguousarray(out[:, ::-1]) if flip else out


def eval_image(image: Any, size: int) -> np.ndarray:
  """uint8 (size, size, 3): resize shorter side to 256/224 size, centre crop."""
  img = open_image(image)
  return crop_resize(img, eval_box(img.size[1], img.size[0], size), size)


# ----------------------------------------------------------------------------- the streams

_permutation = functools.lru_cache(maxsize=2)(epoch_permutation)   # one epoch = 10 MB at 1.28M


def record_index(seed: int, position: int, n: int) -> int:
  """The example at global stream position ``position`` (epochs are seeded permutations)."""
  epoch, offset = divmod(position, n)
  return int(_permutation(seed, epoch, n)[offset])


def _read(source: RecordSource, index: int) -> tuple[Any, int]:
  record = source[index]
  return record["image"], int(record["label"])


def _warn_corrupt(index: int, error: Exception, action: str) -> None:
  _log.warning("%s record %d is not a decodable image (%s: %s); %s; %d corrupt records so far "
               "in this process", NAME, index, type(error).__name__, error, action,
               _count_corrupt())


def _global_position(q: int, local_batch: int, global_batch: int, process_index: int) -> int:
  """Local stream index q of process p -> position in the global stream: row p*Bl + j of
  global batch q // Bl (the rows ``data.base.local_slice`` gives process p)."""
  k, j = divmod(q, local_batch)
  return k * global_batch + process_index * local_batch + j


@dataclasses.dataclass(frozen=True)
class _TrainExample:
  """Local stream index q -> the example of global position t (see the module docstring)."""
  source: RecordSource
  seed: int
  global_batch: int
  local_batch: int
  process_index: int
  size: int

  def position(self, q: int) -> int:
    return _global_position(q, self.local_batch, self.global_batch, self.process_index)

  def __call__(self, q: int) -> Example:
    t, n = self.position(q), len(self.source)
    for k in range(MAX_CORRUPT_RUN + 1):
      index = record_index(self.seed, t + k, n)
      try:
        image, label = _read(self.source, index)
        return {"image": train_image(image, self.seed, t, self.size),
                "label": np.int32(label)}
      except _DECODE_ERRORS as e:
        _warn_corrupt(index, e, f"training substitutes the record at stream position {t + k + 1}")
    raise DataError(f"{MAX_CORRUPT_RUN + 1} undecodable {NAME} records in a row from stream "
                    f"position {t}; the data set is damaged, rebuild it with tfds build")


@dataclasses.dataclass(frozen=True)
class _EvalExample:
  """Local index q -> split example t (in order), or padding (mask False) past the end."""
  source: RecordSource
  global_batch: int
  local_batch: int
  process_index: int
  size: int

  def __call__(self, q: int) -> Example:
    t = _global_position(q, self.local_batch, self.global_batch, self.process_index)
    empty = {"image": np.zeros((self.size, self.size, 3), np.uint8), "label": np.int32(0),
             "mask": np.bool_(False)}
    if t >= len(self.source):
      return empty
    try:
      image, label = _read(self.source, t)
      return {"image": eval_image(image, self.size), "label": np.int32(label),
              "mask": np.bool_(True)}
    except _DECODE_ERRORS as e:
      _warn_corrupt(t, e, "evaluation leaves it out (mask False)")
      return empty


def _process(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
  p = jax.process_index() if process_index is None else int(process_index)
  count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= p < count:
    raise DataError(f"process_index {p} must be in [0, {count}) (process_count {count})")
  return p, count


def _iterate(ds: grain.MapDataset, data_config: ml_collections.ConfigDict) -> Iterator[Example]:
  """Prefetches ``data.prefetch`` batches: in :func:`resolve_workers` processes, or in-process
  threads.

  Memory is bounded per worker: it holds at most ``max(1, data.prefetch)`` finished uint8
  batches of ``B/P x S x S x 3`` bytes (38.5 MB at a local batch of 256 and S = 224; 77 MB
  at 512) plus the one record it is decoding (a JPEG and its decoded image, a few MB).
  """
  prefetch = int(data_config.prefetch)
  workers = resolve_workers(int(data_config.workers))
  if prefetch < 0:
    raise DataError(f"data.prefetch must be >= 0, got {prefetch}")
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, prefetch),
                                            prefetch_buffer_size=prefetch))
  if workers:
    if not flags.FLAGS.is_parsed():   # grain's workers read absl flags; outside absl.app: defaults
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(1, prefetch)))
  return iter(it)


_FOREVER = 2**62
AUTO_WORKERS = -1
# Cores left to the training process itself: the jitted steps' dispatch, the thread that puts
# the next batches on the devices, host-side metrics, checkpoints and evaluation.
TRAINING_PROCESS_CORES = 2


def available_cores() -> int:
  """The CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def resolve_workers(workers: int, cores: Optional[int] = None) -> int:
  """The grain worker processes ``data.workers`` asks for.

  -1 (auto, the default): one per core of ``cores`` (default :func:`available_cores`) minus
  ``TRAINING_PROCESS_CORES``: 0 on a host of <= 2 cores, where decoding runs in in-process
  threads instead. >= 0: exactly that many (0 = in-process).
  """
  if workers < AUTO_WORKERS:
    raise DataError(f"data.workers must be -1 (auto) or >= 0, got {workers}")
  if workers == AUTO_WORKERS:
    cores = available_cores() if cores is None else cores
    return max(0, cores - TRAINING_PROCESS_CORES)
  return workers


def train_batches(data_config: ml_collections.ConfigDict, global_batch: int, seed: int,
                  start_step: int, process_index: Optional[int] = None,
                  process_count: Optional[int] = None, *,
                  source: Optional[RecordSource] = None) -> Iterator[Example]:
  """This process's training batches for steps start_step, start_step + 1, ... (forever).

  Yields {"image": (B/P, S, S, 3) uint8, "label": (B/P,) int32}, S = data.image_size:
  positions ``[p B/P, (p+1) B/P)`` of ``batch_indices(seed, step, 1, B, n)[0]``, augmented.
  ``source`` replaces the tfds train split (anything with len() and [i] -> {"image", "label"}).
  """
  p, count = _process(process_index, process_count)
  local = check_process_batch(global_batch, count)
  if start_step < 0:
    raise DataError(f"start_step must be >= 0, got {start_step}")
  source = open_source(data_config.dir, "train") if source is None else source
  example = _TrainExample(source, int(seed), global_batch, local, p, int(data_config.image_size))
  ds = (grain.MapDataset.range(start_step * local, _FOREVER).map(example)
        .batch(local, drop_remainder=True))
  return _iterate(ds, data_config)


def num_eval_batches(n: int, global_batch: int) -> int:
  """ceil(n / global_batch): every process yields this many eval batches."""
  return -(-n // global_batch)


def eval_batches(data_config: ml_collections.ConfigDict, split: str, global_batch: int,
                 process_index: Optional[int] = None, process_count: Optional[int] = None, *,
                 source: Optional[RecordSource] = None) -> Iterator[Example]:
  """The whole ``split`` once, in order: {"image", "label", "mask": (B/P,) bool} per batch.

  Global batch k holds examples [k B, (k+1) B), process p its slice [p B/P, (p+1) B/P); the
  last is padded (mask False) to full size, so summing masked metrics is exact over the split.
  """
  p, count = _process(process_index, process_count)
  local = check_process_batch(global_batch, count)
  source = open_source(data_config.dir, split) if source is None else source
  example = _EvalExample(source, global_batch, local, p, int(data_config.image_size))
  steps = num_eval_batches(len(source), global_batch)
  ds = grain.MapDataset.range(steps * local).map(example).batch(local, drop_remainder=True)
  return _iterate(ds, data_config)
