"""The streaming ImageNet pipeline: tfds mock data, a real ArrayRecord set of JPEGs, sampling."""

from __future__ import annotations

import io
import itertools
import logging
import os
import subprocess
import sys

from array_record.python.array_record_module import ArrayRecordWriter
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import naming
from PIL import Image

from powerprop_jax.experiment import config as config_lib
from powerprop_jax.experiment import parallel
from powerprop_jax.experiment.data import base as data_base
from powerprop_jax.experiment.data import imagenet
from powerprop_jax.experiment.data.base import DataError, batch_indices

SIZE = 16
LO = (0.0 - imagenet.MEAN) / imagenet.STD   # normalised range per channel
HI = (1.0 - imagenet.MEAN) / imagenet.STD


def _config(data_dir: str = "", workers: int = 0) -> ml_collections.ConfigDict:
  c = config_lib.base().data
  c.name, c.dir, c.image_size, c.workers, c.prefetch = "imagenet2012", data_dir, SIZE, workers, 2
  return c


def _jpeg(height: int, width: int, seed: int, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
  """Random smooth content (a colour gradient plus noise), quality 90."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:height, :width]
  base = rng.uniform(0, 255, 3) * (x / width)[..., None] + rng.uniform(0, 255, 3) * (
      y / height)[..., None]
  pixels = np.clip(base / 2 + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
  return buf.getvalue()


class ListSource:
  """In-memory record source: record i is {"image": bytes, "label": i}."""

  def __init__(self, images: list[bytes]):
    self.images = images

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> dict:
    return {"image": self.images[i], "label": np.int64(i)}


def _small_source(n: int) -> ListSource:
  rng = np.random.default_rng(n)
  return ListSource([_jpeg(int(rng.integers(20, 48)), int(rng.integers(20, 48)), i)
                     for i in range(n)])


def _take(it, k: int) -> list[dict]:
  out = list(itertools.islice(it, k))
  if hasattr(it, "close"):   # grain iterators with worker processes hold shared memory
    it.close()
  return out


# A real tfds imagenet2012 directory: ArrayRecord shards of serialized tf.Examples (JPEG bytes).
DISK_SIZES = [(375, 500), (500, 333), (333, 500), (64, 48), (40, 300), (300, 40), (120, 120),
              (90, 160), (500, 375), (200, 150)]
CORRUPT_TRAIN = 3   # train record 3 is a truncated JPEG


def _write_tfds_dir(root: str) -> None:
  """imagenet2012 as ``tfds build --file_format=array_record`` lays it out (train 4: greyscale
  JPEG, 6: CMYK JPEG, 7: PNG, as a few ImageNet files are)."""
  builder = tfds.builder("imagenet2012", data_dir=root, file_format="array_record")
  features = builder.info.features
  os.makedirs(builder.data_dir, exist_ok=True)
  splits = []
  for split, n in (("train", len(DISK_SIZES)), ("validation", 5)):
    template = naming.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name="imagenet2012",
                                          split=split, filetype_suffix="array_record")
    writer = ArrayRecordWriter(os.fspath(template.sharded_filepath(shard_index=0, num_shards=1)),
                               "group_size:1")
    for i in range(n):
      h, w = DISK_SIZES[i]
      mode, fmt = {4: ("L", "JPEG"), 6: ("CMYK", "JPEG"), 7: ("RGB", "PNG")}.get(i, ("RGB", "JPEG"))
      data = _jpeg(h, w, 100 + i, mode, fmt)
      if split == "train" and i == CORRUPT_TRAIN:
        data = data[:len(data) // 3]
      writer.write(features.serialize_example(
          {"image": io.BytesIO(data), "label": i, "file_name": f"{split}_{i}.JPEG"}))
    writer.close()
    splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0,
                                      filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.write_to_directory(builder.data_dir)


@pytest.fixture(scope="module")
def disk_dir(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp("imagenet"))
  _write_tfds_dir(root)
  return root


def _check_batch(batch: dict, local: int, eval_: bool = False) -> None:
  assert batch["image"].shape == (local, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (local,) and batch["label"].dtype == np.int32
  if eval_:
    assert batch["mask"].shape == (local,) and batch["mask"].dtype == np.bool_
  img = imagenet.normalise(batch["image"])
  assert np.all(img >= LO - 1e-5) and np.all(img <= HI + 1e-5)


# ----------------------------------------------------------------------------- end to end

def test_mock_data_end_to_end():
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    imagenet.check_prepared("")
    assert imagenet.num_examples("", "train") == imagenet.num_examples("", "validation") == 6
    train = _take(imagenet.train_batches(_config(), 4, 0, 0, 0, 1), 2)
    evals = list(imagenet.eval_batches(_config(), "validation", 4, 0, 1))
  for b in train:
    _check_batch(b, 4)
  assert len(evals) == 2
  for b in evals:
    _check_batch(b, 4, eval_=True)
  assert [b["mask"].tolist() for b in evals] == [[True] * 4, [True, True, False, False]]


def test_arrayrecord_jpegs_end_to_end(disk_dir):
  assert imagenet.num_examples(disk_dir, "train") == len(DISK_SIZES)
  assert isinstance(imagenet.open_source(disk_dir, "train")[0]["image"], bytes)  # not decoded
  (b,) = _take(imagenet.train_batches(_config(disk_dir), 4, 1, 0, 0, 1), 1)
  _check_batch(b, 4)
  assert imagenet.normalise(b["image"]).std() > 0.1
  evals = list(imagenet.eval_batches(_config(disk_dir), "validation", 4, 0, 1))
  assert len(evals) == 2 and sum(int(e["mask"].sum()) for e in evals) == 5
  for e in evals:
    _check_batch(e, 4, eval_=True)
  labels = np.concatenate([e["label"][e["mask"]] for e in evals])
  assert labels.tolist() == list(range(5))


def test_eval_preprocessing_is_resize_then_centre_crop():
  top, left, h, w = imagenet.eval_box(375, 500, 224)
  assert h == w == pytest.approx(375 * 224 / 256)
  assert (top, left) == (pytest.approx((375 - h) / 2), pytest.approx((500 - w) / 2))
  flat = Image.new("RGB", (500, 375), (255, 0, 128))
  out = imagenet.eval_image(np.asarray(flat), SIZE)   # already decoded, as from mock data
  np.testing.assert_array_equal(out, np.broadcast_to(np.array([255, 0, 128], np.uint8),
                                                    out.shape))


# ----------------------------------------------------------------------------- augmentation

def test_crop_boxes_in_bounds_with_inception_area_and_aspect():
  rng = np.random.default_rng(0)
  areas, logs = [], []
  for i in range(3000):
    height, width = [(375, 500), (500, 333), (224, 224), (60, 90)][i % 4]
    (top, left, h, w), fallback = imagenet.sample_crop_box(rng, height, width)
    assert 0 <= top and 0 <= left and top + h <= height and left + w <= width and h > 0 < w
    if not fallback:   # rounding to whole pixels moves area and aspect by < 1 pixel per side
      frac = h * w / (height * width)
      assert 0.08 - 2 * (h + w) / (height * width) <= frac <= 1.0
      assert 3 / 4 * (1 - 1 / h) - 1 / h <= w / h <= 4 / 3 * (1 + 1 / h) + 1 / h
      areas.append(frac)
      logs.append(np.log(w / h))
  assert len(areas) > 2500
  assert min(areas) < 0.1 and max(areas) > 0.9 and 0.4 < np.median(areas) < 0.7
  logs = np.array(logs)   # log-uniform aspect: w > h as often as w < h (uniform r: 57%)
  assert abs(logs.mean()) < 0.02
  assert np.sum(logs > 0) / np.sum(logs != 0) == pytest.approx(0.5, abs=0.03)


def test_crop_fallback_is_centred_aspect_clipped():
  rng = np.random.default_rng(0)
  assert imagenet.sample_crop_box(rng, 10, 1000) == ((0, 493, 10, 13), True)
  assert imagenet.sample_crop_box(rng, 1000, 10) == ((493, 0, 13, 10), True)
  # An area range no box can meet falls back to the centred whole image.
  assert imagenet.sample_crop_box(rng, 300, 300, area_range=(1.5, 2.0)) == ((0, 0, 300, 300), True)


def test_flip_is_applied_half_the_time():
  data = _jpeg(120, 160, 0)
  flips = []
  for t in range(40):
    box, flip = imagenet.augment_params(7, t, 120, 160)
    crop = imagenet.crop_resize(Image.open(io.BytesIO(data)), box, SIZE)
    expected = crop[:, ::-1] if flip else crop
    np.testing.assert_array_equal(imagenet.train_image(data, 7, t, SIZE), expected)
    flips.append(flip)
  assert 10 < sum(flips) < 30
  assert imagenet.augment_params(7, 3, 120, 160) == imagenet.augment_params(7, 3, 120, 160)
  assert any(imagenet.augment_params(7, t, 120, 160) != imagenet.augment_params(8, t, 120, 160)
             for t in range(5))


def test_workers_default_to_the_cores_the_host_can_spare():
  assert config_lib.base().data.workers == imagenet.AUTO_WORKERS
  assert imagenet.resolve_workers(-1, cores=16) == 16 - imagenet.TRAINING_PROCESS_CORES
  assert imagenet.resolve_workers(-1, cores=2) == 0   # decode in-process threads instead
  assert imagenet.resolve_workers(-1) == max(0, imagenet.available_cores() - 2)
  assert imagenet.resolve_workers(3, cores=2) == 3
  with pytest.raises(DataError, match="data.workers must be -1 .auto. or >= 0, got -2"):
    imagenet.resolve_workers(-2)


def test_normalise_uses_imagenet_mean_and_std():
  out = imagenet.normalise(np.array([[0, 0, 0], [255, 255, 255]], np.uint8))
  np.testing.assert_allclose(out, [[-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
                                   [0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225]], rtol=1e-5)
  assert out.dtype == np.float32
  on_device = data_base.normalise_uint8({"image": jnp.asarray([[0, 0, 0], [255, 255, 255]],
                                                               jnp.uint8)})["image"]
  np.testing.assert_allclose(on_device, out, rtol=1e-6)


# ----------------------------------------------------------------------------- the sampler

def _stream(source, seed=0, start=0, steps=3, batch=4, p=0, count=1, workers=0):
  return _take(imagenet.train_batches(_config(workers=workers), batch, seed, start, p, count,
                                      source=source), steps)


def _equal(a: list[dict], b: list[dict]) -> bool:
  return len(a) == len(b) and all(
      np.array_equal(x["image"], y["image"]) and np.array_equal(x["label"], y["label"])
      for x, y in zip(a, b))


def test_same_seed_same_batches_other_seed_differs():
  source = _small_source(10)
  a, b, c = _stream(source, seed=1), _stream(source, seed=1), _stream(source, seed=2)
  assert _equal(a, b)
  assert not any(np.array_equal(x["label"], y["label"]) for x, y in zip(a, c))


def test_resume_continues_the_stream():
  source = _small_source(10)
  assert _equal(_stream(source, start=2, steps=2), _stream(source, start=0, steps=4)[2:])


def test_two_processes_split_each_global_batch_and_cover_the_epoch():
  n, batch, steps = 12, 4, 3   # one epoch
  source = _small_source(n)
  shards = [_stream(source, seed=5, steps=steps, batch=batch, p=p, count=2) for p in (0, 1)]
  single = _stream(source, seed=5, steps=steps, batch=batch)
  labels = []
  for s in range(steps):
    glued = {k: np.concatenate([shards[0][s][k], shards[1][s][k]]) for k in ("image", "label")}
    np.testing.assert_array_equal(glued["label"], batch_indices(5, s, 1, batch, n)[0])
    assert _equal([glued], [single[s]])   # same examples, same augmentation
    labels += [shards[0][s]["label"], shards[1][s]["label"]]
  labels = np.concatenate(labels)
  assert sorted(labels.tolist()) == list(range(n))   # no repeats, union = the split


def test_worker_processes_give_the_same_batches():
  source = _small_source(8)
  assert _equal(_stream(source, steps=2, workers=1), _stream(source, steps=2, workers=0))


@pytest.mark.parametrize("n,batch,count", [(7, 4, 2), (8, 4, 2), (5, 6, 3), (3, 2, 1)])
def test_eval_covers_every_example_once(n, batch, count):
  source = _small_source(n)
  per_process = [list(imagenet.eval_batches(_config(), "validation", batch, p, count,
                                            source=source)) for p in range(count)]
  steps = -(-n // batch)
  assert all(len(b) == steps for b in per_process)
  seen = []
  for k in range(steps):
    for p in range(count):
      b = per_process[p][k]
      _check_batch(b, batch // count, eval_=True)
      seen += b["label"][b["mask"]].tolist()
      assert not b["image"][~b["mask"]].any()
  assert seen == list(range(n))


# ----------------------------------------------------------------------------- failures

def test_corrupt_jpeg_is_counted_warned_and_replaced(disk_dir, caplog):
  n, batch = len(DISK_SIZES), 5
  before = imagenet.corrupt_count()
  cfg = _config(disk_dir)
  cfg.prefetch = 0   # no read-ahead into the next epoch (which would meet record 3 again)
  with caplog.at_level(logging.WARNING, logger=imagenet.__name__):
    batches = _take(imagenet.train_batches(cfg, batch, 0, 0, 0, 1), 2)  # 1 epoch
  assert imagenet.corrupt_count() == before + 1
  (msg,) = [r.getMessage() for r in caplog.records if "not a decodable image" in r.getMessage()]
  assert f"record {CORRUPT_TRAIN} " in msg and f"{before + 1} corrupt records" in msg
  labels = np.concatenate([b["label"] for b in batches]).tolist()
  order = batch_indices(0, 0, 2, batch, n).ravel().tolist()
  where = order.index(CORRUPT_TRAIN)
  assert labels == order[:where] + [order[where + 1]] + order[where + 1:]
  for b in batches:
    _check_batch(b, batch)


def test_corrupt_eval_image_is_masked_out(caplog):
  source = _small_source(5)
  source.images[2] = b"this is not a JPEG"
  with caplog.at_level(logging.WARNING, logger=imagenet.__name__):
    (b,) = list(imagenet.eval_batches(_config(), "validation", 6, 0, 1, source=source))
  assert b["mask"].tolist() == [True, True, False, True, True, False]
  assert any("record 2 " in r.getMessage() for r in caplog.records)


def test_missing_data_dir_is_one_clear_line(tmp_path):
  for call in (lambda: imagenet.check_prepared(str(tmp_path / "nowhere")),
               lambda: imagenet.train_batches(_config(str(tmp_path)), 4, 0, 0, 0, 1)):
    with pytest.raises(DataError) as e:
      call()
    msg = str(e.value)
    assert "\n" not in msg and "not prepared" in msg
    assert "tfds build imagenet2012" in msg and "--file_format=array_record" in msg


def test_batch_not_divisible_by_processes_is_refused():
  source = _small_source(4)
  with pytest.raises(DataError, match="global batch 5 .* processes 2"):
    imagenet.train_batches(_config(), 5, 0, 0, 0, 2, source=source)
  with pytest.raises(DataError, match="global batch 3 .* processes 2"):
    imagenet.eval_batches(_config(), "validation", 3, 1, 2, source=source)
  with pytest.raises(DataError, match="process_index 2"):
    imagenet.train_batches(_config(), 4, 0, 0, 2, 2, source=source)


# ----------------------------------------------------------------------------- parallel

def test_distributed_env_detection():
  assert parallel.distributed_env({}) is None
  assert parallel.distributed_env({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
  assert parallel.distributed_env({"SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2"})
  assert parallel.distributed_env({"SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1"}) is None
  assert parallel.distributed_env({"TPU_WORKER_HOSTNAMES": "a,b"})
  assert parallel.distributed_env({"TPU_WORKER_HOSTNAMES": "a"}) is None
  parallel.maybe_initialize(False)   # a plain single-process run: nothing to do


GLOBAL_BATCH_SCRIPT = """
import numpy as np, jax
from powerprop_jax.experiment import parallel, train
mesh = parallel.make_mesh()
assert mesh.size == 4
local = {"image": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "label": np.arange(8)}
g = parallel.global_batch(local, mesh)
assert g["image"].shape == (8, 3) and len(g["image"].sharding.device_set) == 4
assert [s.data.shape for s in g["image"].addressable_shards] == [(2, 3)] * 4
np.testing.assert_array_equal(np.asarray(g["label"]), np.arange(8))
k = parallel.global_batch({"image": np.arange(3 * 8 * 2).reshape(3, 8, 2)}, mesh,
                          stacked_steps=True)["image"]
assert k.shape == (3, 8, 2) and [s.data.shape for s in k.addressable_shards] == [(3, 2, 2)] * 4
np.testing.assert_array_equal(np.asarray(k), np.arange(3 * 8 * 2).reshape(3, 8, 2))
try:
  train.check_batch_split(6, mesh.size)
except ValueError as e:
  assert "batch_size=6" in str(e) and "4 devices" in str(e) and "\\n" not in str(e)
else:
  raise AssertionError("6 over 4 devices accepted")
train.check_batch_split(8, mesh.size)
print("OK")
"""


def test_global_batch_spans_all_devices():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", GLOBAL_BATCH_SCRIPT], env=env,
                       capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
