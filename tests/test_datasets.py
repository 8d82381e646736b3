"""Tests for score_sde.datasets: sources, preprocessing, and the deterministic, seekable streams.

TFDS sources are exercised two ways, both offline: `tfds.testing.mock_data` (random examples with each real
dataset's features: shapes, crops, ranges) and a tiny dataset really prepared on disk in several shards
(stored order, split slicing, seeking, processes), standing in for CIFAR-10.
"""
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import default_celeba_configs, default_cifar10_configs, default_digits_configs, default_lsun_configs
from score_sde import data_digits, data_preprocessing, data_sources, datasets
from tests import stream_utils

tf.config.set_visible_devices([], "GPU")


_take, _assert_same_batches, _join = stream_utils.take, stream_utils.assert_same_batches, stream_utils.join


def _cifar_config(**data):
  config = default_cifar10_configs.get_default_configs()
  config.training.batch_size = 8
  config.eval.batch_size = 8
  for key, value in data.items():
    config.data[key] = value
  return config


# --------------------------------------------------------------------------------------------- scalers
@pytest.mark.parametrize("centered", [False, True])
def test_scalers_round_trip(centered):
  config = default_cifar10_configs.get_default_configs()
  config.data.centered = centered
  x = np.linspace(0.0, 1.0, 11, dtype=np.float32)
  scaled = datasets.get_data_scaler(config)(x)
  np.testing.assert_allclose(scaled[[0, -1]], [-1.0, 1.0] if centered else [0.0, 1.0])
  np.testing.assert_allclose(datasets.get_data_inverse_scaler(config)(scaled), x, atol=1e-7)


# ---------------------------------------------------------------------------------------------- digits
def test_digits_split_and_content():
  config = default_digits_configs.get_default_configs()
  train, train_labels = data_digits.digits(16, "train")
  test, _ = data_digits.digits(16, "test")
  assert train.shape == (1500, 16, 16, 1) and test.shape == (297, 16, 16, 1)
  assert datasets.num_examples(config, "train") == 1500 and datasets.num_examples(config, "test") == 297
  assert 0.0 <= min(train.min(), test.min()) and max(train.max(), test.max()) <= 1.0
  levels = np.concatenate([train.ravel(), test.ravel()]) * 255.0  # 8-bit images, like every other data set
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
  assert len(np.unique(np.round(levels))) > 200
  # Disjoint: no test image also appears in train (the raw set holds a few exact duplicates; allow those).
  train_rows = {row.tobytes() for row in train.reshape(1500, -1)}
  assert sum(row.tobytes() in train_rows for row in test.reshape(297, -1)) <= 3
  # Real digits: strokes in the middle, blank corners, all ten classes, mean images differ by class.
  mean = train.mean(axis=0)[..., 0]
  assert mean.std() > 0.05 and mean[6:10, 6:10].mean() > 0.4 and mean[[0, 0, -1, -1], [0, -1, 0, -1]].max() < 0.05
  assert set(train_labels.tolist()) == set(range(10))
  assert np.abs(train[train_labels == 0].mean(0) - train[train_labels == 1].mean(0)).max() > 0.3
  batch = next(datasets.train_iterator(config))
  assert batch["image"].shape == (64, 16, 16, 1) and batch["image"].dtype == np.float32


@pytest.mark.parametrize("shape,size", [((8, 8), 16), ((32, 32), 16), ((218, 178), 64), ((17, 47), 32)])
def test_numpy_resize_matches_tf_antialiased_bilinear(shape, size):
  x = np.random.default_rng(0).random((2, *shape, 3))
  want = tf.image.resize(x, [size, size], method="bilinear", antialias=True).numpy()
  np.testing.assert_allclose(datasets.resize_images_np(x, size), want, atol=1e-5)


def _digits_config(batch_size=64):
  config = default_digits_configs.get_default_configs()
  config.training.batch_size = batch_size
  config.data.random_flip = True
  config.data.uniform_dequantization = True
  return config


def test_digits_resume_is_bitwise_across_epoch_boundary():
  config = _digits_config(batch_size=64)  # 1500 / 64: epoch 1 starts inside batch 23
  reference = _take(datasets.train_iterator(config), 26)
  for start in (1, 22, 23, 24):
    _assert_same_batches(_take(datasets.train_iterator(config, start_step=start), 26 - start), reference[start:])
  # One epoch is a permutation of the training set.
  labels = np.concatenate([b["label"] for b in reference])[:1500]
  _, train_labels = data_digits.digits(16, "train")
  np.testing.assert_array_equal(np.bincount(labels), np.bincount(train_labels))
  # Another seed, another order.
  config.seed += 1
  assert not np.array_equal(next(datasets.train_iterator(config))["label"], reference[0]["label"])


def test_digits_processes_partition_the_global_batch():
  config = _digits_config(batch_size=64)
  reference = _take(datasets.train_iterator(config, start_step=22), 3)
  for count in (2, 4):
    slices = [_take(datasets.train_iterator(config, start_step=22, process_index=i, process_count=count), 3)
              for i in range(count)]
    assert slices[0][0]["image"].shape == (64 // count, 16, 16, 1)
    _assert_same_batches(_join(slices), reference)


def test_digits_flip_and_dequantisation():
  config = _digits_config()
  config.data.random_flip = config.data.uniform_dequantization = False
  plain = next(datasets.train_iterator(config))["image"]
  config.data.random_flip = True
  flipped = next(datasets.train_iterator(config))["image"]
  same = np.all(flipped == plain, axis=(1, 2, 3))
  mirrored = np.all(flipped == plain[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored) and np.sum(mirrored & ~same) > 5
  config.data.uniform_dequantization = True
  noisy = next(datasets.train_iterator(config))["image"]
  assert 0 < np.abs(noisy - flipped).max() < 1 / 256


def test_digits_eval_pads_masks_and_repeats():
  config = _digits_config()
  config.data.uniform_dequantization = False
  batches = list(datasets.eval_iterator(config, batch_size=100))
  assert [int(b["mask"].sum()) for b in batches] == [100, 100, 97]
  assert np.all(batches[-1]["image"][97:] == 0)
  test, labels = data_digits.digits(16, "test")
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches])[:297], test)
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:297], labels)
  # Repeating: passes follow each other, no padding; resumable by start_batch.
  repeated = _take(datasets.eval_iterator(config, batch_size=100, repeat=True), 4)
  np.testing.assert_array_equal(repeated[2]["image"][97:], test[:3])
  _assert_same_batches(_take(datasets.eval_iterator(config, batch_size=100, repeat=True, start_batch=2), 2),
                       repeated[2:])
  # Dequantisation noise: fixed per pass, fresh per pass.
  first = next(datasets.eval_iterator(config, batch_size=100, dequantize=True))["image"]
  again = next(datasets.eval_iterator(config, batch_size=100, dequantize=True))["image"]
  other = next(datasets.eval_iterator(config, batch_size=100, dequantize=True, pass_index=1))["image"]
  np.testing.assert_array_equal(first, again)
  assert 0 < np.abs(first - other).max() < 1 / 256


# ------------------------------------------------------------------------------- TFDS, mocked sources
@pytest.mark.parametrize("name,size,has_label", [("CIFAR10", 32, True), ("SVHN", 32, True), ("CELEBA", 64, False),
                                                  ("LSUN", 32, False)])
def test_tfds_sources_shapes_and_range(name, size, has_label):
  config = {"CELEBA": default_celeba_configs, "LSUN": default_lsun_configs}.get(
      name, default_cifar10_configs).get_default_configs()
  config.data.dataset, config.data.image_size = name, size
  config.training.batch_size = config.eval.batch_size = 4
  with tfds.testing.mock_data(num_examples=6):
    train = next(datasets.train_iterator(config))
    evals = list(datasets.eval_iterator(config))
  assert train["image"].shape == (4, size, size, 3) and train["image"].dtype == np.float32
  assert 0.0 <= train["image"].min() and train["image"].max() <= 1.0 and train["image"].std() > 0.05
  assert ("label" in train) == has_label
  assert [b["mask"].tolist() for b in evals] == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_flip_flips_and_dequantisation_stays_within_a_bin():
  with tfds.testing.mock_data(num_examples=16):
    plain = next(datasets.train_iterator(_cifar_config(random_flip=False)))["image"]
    flipped = next(datasets.train_iterator(_cifar_config(random_flip=True)))["image"]
    noisy = next(datasets.train_iterator(_cifar_config(random_flip=True, uniform_dequantization=True)))["image"]
  same = np.all(flipped == plain, axis=(1, 2, 3))
  mirrored = np.all(flipped == plain[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored) and np.any(mirrored & ~same) and np.any(same)
  assert 0 < np.abs(noisy - flipped).max() < 1 / 256
  np.testing.assert_allclose(plain * 255, np.round(plain * 255), atol=1e-4)  # no resize: exact 8-bit values


@pytest.mark.parametrize("crop,height,width", [(140, 218, 178), ("square", 40, 90), ("square", 90, 40)])
def test_centre_crop_then_resize(crop, height, width):
  side = crop if crop != "square" else min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  image = np.zeros((height, width, 3), np.uint8)
  image[top:top + side, left:left + side] = 255  # only the kept square is white
  out = data_preprocessing.tf_to_size(tf, tf.constant(image), crop, 32).numpy()
  assert out.shape == (32, 32, 3)
  np.testing.assert_allclose(out, 1.0, atol=1e-6)


# ------------------------------------------------------------------------------- LSUN as 2021
def _edgy_image(height, width, seed):
  """Random uint8 blocks of 0 / 255 with noise: sharp edges, so bicubic resampling overshoots both ends."""
  rng = np.random.RandomState(seed)
  blocks = rng.randint(0, 2, (height // 4 + 1, width // 4 + 1, 3)) * 255
  image = np.repeat(np.repeat(blocks, 4, 0), 4, 1)[:height, :width]
  noise = rng.randint(-20, 21, image.shape) * (rng.rand(*image.shape) < 0.3)
  return np.clip(image + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("height,width,size", [(40, 90, 32), (90, 41, 32), (37, 37, 16), (32, 32, 32)])
def test_lsun_bicubic_crop_resize_as_2021(height, width, size):
  """2021's `crop_resize`: the square centre crop of the uint8 image, tf.image.resize(antialias=True,
  BICUBIC) in 0..255 units, tf.cast to uint8 (truncating; clipped, see `lsun_to_size`), then
  convert_image_dtype to float32."""
  image = _edgy_image(height, width, height * width)
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  resized = tf.image.resize(tf.constant(image[top:top + side, left:left + side]), [size, size], antialias=True,
                            method=tf.image.ResizeMethod.BICUBIC).numpy()
  if side != size:
    assert resized.min() < -0.5 and resized.max() > 255.5  # the overshoot the clip handles
  want = np.floor(np.clip(resized, 0.0, 255.0)).astype(np.uint8)
  # size x size x 3 is a multiple of 32 here, where TF's own cast saturates: 2021's plain tf.cast agrees.
  np.testing.assert_array_equal(tf.cast(tf.constant(resized), tf.uint8).numpy(), want)
  got = datasets.lsun_to_size(tf, tf.constant(image), size).numpy()
  assert got.shape == (size, size, 3) and got.dtype == np.float32
  np.testing.assert_array_equal(got, want.astype(np.float32) * np.float32(1.0 / 255.0))


@pytest.mark.parametrize("height,width", [(256, 301), (301, 256), (150, 203), (128, 128)])
def test_lsun_128_resize_small_then_central_crop_as_2021(height, width):
  """2021 at image_size 128: convert_image_dtype, `resize_small` (shorter side to 128, the other side
  round(side * 128 / shorter) half to even: 301 -> 150.5 -> 150), antialiased bilinear, `central_crop`."""
  image = _edgy_image(height, width, 7)
  ratio = 128 / min(height, width)
  new_h, new_w = (int(np.round(np.float32(n * ratio))) for n in (height, width))
  if 301 in (height, width):
    assert max(new_h, new_w) == 150  # the half-way case: half to even, not up
  resized = tf.image.resize(tf.image.convert_image_dtype(tf.constant(image), tf.float32), [new_h, new_w],
                            antialias=True).numpy()
  top, left = (new_h - 128) // 2, (new_w - 128) // 2
  want = resized[top:top + 128, left:left + 128]
  got = datasets.lsun_to_size(tf, tf.constant(image), 128).numpy()
  assert got.shape == (128, 128, 3)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  assert 0.0 <= got.min() and got.max() <= 1.0


def test_lsun_pipeline_uses_the_2021_preprocessing():
  """Through the TFDS source (mocked LSUN, random images of random sizes): every image is on the 8-bit grid, as
  2021's uint8 cast leaves it (a bilinear resize of random pixels is not)."""
  config = default_lsun_configs.get_default_configs()
  config.data.image_size, config.data.random_flip = 32, False
  config.training.batch_size = config.eval.batch_size = 4
  with tfds.testing.mock_data(num_examples=4):
    images = next(datasets.eval_iterator(config))["image"]
  levels = images * 255.0
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
  assert len(np.unique(np.round(levels))) > 100


# --------------------------------------------------------------------------- TFDS, a real tiny dataset
class ScoreSdeTinyImages(tfds.core.GeneratorBasedBuilder):
  """60 train / 10 test 6x6 RGB images whose pixels encode their index (label = index)."""

  VERSION = tfds.core.Version("1.0.0")
  # A top-level module name sends TFDS's code_path lookup down its plain path, which needs no
  # importlib_resources (not a dependency of this project).
  __module__ = "score_sde_tiny_images_builder"

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(6, 6, 3)), "label": tfds.features.ClassLabel(num_classes=100)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, 60), "test": self._generate_examples(60, 70)}

  def _generate_examples(self, start, stop):  # pylint: disable=arguments-differ
    for i in range(start, stop):
      yield i, {"image": ((np.arange(108).reshape(6, 6, 3) + 3 * i) % 256).astype(np.uint8), "label": i}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  ScoreSdeTinyImages(data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=4))
  return data_dir


@pytest.fixture
def tiny(tiny_dir, monkeypatch):
  """A CIFAR10 config whose TFDS source is the tiny set, with 8-example shuffle windows."""
  sources = dict(data_sources.TFDS_SOURCES)
  sources["CIFAR10"] = ("score_sde_tiny_images", {"train": "train", "test": "test"}, None, True)
  monkeypatch.setattr(data_sources, "TFDS_SOURCES", sources)
  monkeypatch.setattr(data_sources, "TFDS_WINDOW", 8)
  config = _cifar_config(data_dir=tiny_dir, image_size=6, random_flip=True, uniform_dequantization=True)
  return config


def _stored_train_labels(tiny_dir):
  builder = tfds.builder("score_sde_tiny_images", data_dir=tiny_dir)
  read_config = tfds.ReadConfig(interleave_cycle_length=1)
  return [int(ex["label"]) for ex in builder.as_dataset(split="train", shuffle_files=False, read_config=read_config)]


def test_tfds_resume_is_bitwise_across_epoch_boundary(tiny, tiny_dir):
  reference = _take(datasets.train_iterator(tiny), 16)  # 128 positions: epochs 0, 1 and into 2
  for start in (1, 6, 7, 8, 15):  # 7 straddles the first epoch boundary (60), 15 the second (120)
    _assert_same_batches(_take(datasets.train_iterator(tiny, start_step=start), 16 - start), reference[start:])
  labels = np.concatenate([b["label"] for b in reference])
  assert sorted(labels[:60]) == list(range(60)) and sorted(labels[60:120]) == list(range(60))
  assert list(labels[:60]) != list(labels[60:120])  # each epoch has its own order
  # Shuffling stays inside 8-example windows of the stored order.
  stored = _stored_train_labels(tiny_dir)
  for w in range(0, 60, 8):
    assert sorted(labels[w:min(w + 8, 60)]) == sorted(stored[w:w + 8])


def test_tfds_processes_partition_the_global_batch(tiny):
  reference = _take(datasets.train_iterator(tiny, start_step=6), 3)
  slices = [_take(datasets.train_iterator(tiny, start_step=6, process_index=i, process_count=2), 3)
            for i in range(2)]
  assert slices[0][0]["image"].shape == (4, 6, 6, 3)
  _assert_same_batches(_join(slices), reference)


def test_tfds_images_decode_exactly_and_eval_keeps_stored_order(tiny, tiny_dir):
  tiny.data.uniform_dequantization = False
  batches = list(datasets.eval_iterator(tiny, "train"))
  assert len(batches) == 8 and batches[-1]["mask"].tolist() == [1] * 4 + [0] * 4
  labels = np.concatenate([b["label"] for b in batches])[:60]
  assert labels.tolist() == _stored_train_labels(tiny_dir)
  images = np.concatenate([b["image"] for b in batches])[:60]
  want = ((np.arange(108).reshape(1, 6, 6, 3) + 3 * labels[:, None, None, None]) % 256) / 255.0
  np.testing.assert_array_equal(images, want.astype(np.float32))
  halves = [list(datasets.eval_iterator(tiny, "train", process_index=i, process_count=2)) for i in range(2)]
  _assert_same_batches(_join(halves), batches)
  assert datasets.num_examples(tiny, "test") == 10


# ------------------------------------------------------------------------------------------ TFRecords
def _write_records(path, images):
  """CHW uint8 records in the ProGAN / StyleGAN dataset-tool format."""
  with tf.io.TFRecordWriter(str(path)) as writer:
    for image in images:
      feature = {"shape": tf.train.Feature(int64_list=tf.train.Int64List(value=image.shape)),
                 "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()]))}
      writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def _ffhq_config(path, size):
  config = default_lsun_configs.get_default_configs()
  config.data.dataset, config.data.tfrecords_path, config.data.image_size = "FFHQ", str(path), size
  config.data.random_flip = False
  config.training.batch_size = config.eval.batch_size = 4
  return config


def test_tfrecords_read_back_exactly(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, size=(7, 3, 8, 8), dtype=np.uint8)  # CHW
  _write_records(tmp_path / "part0.tfrecords", images[:3])
  _write_records(tmp_path / "part1.tfrecords", images[3:])
  config = _ffhq_config(tmp_path, 8)
  batches = list(datasets.eval_iterator(config, "train"))
  got = np.concatenate([b["image"] for b in batches])
  np.testing.assert_array_equal(got[:7], (images.transpose(0, 2, 3, 1) / 255.0).astype(np.float32))
  assert np.concatenate([b["mask"] for b in batches]).tolist() == [1] * 7 + [0]
  # Seeking by file offsets: every start index gives the tail of the stored order.
  source = data_sources.TFRecordSource(config)
  records = [r["record"] for r in source.read(0).as_numpy_iterator()]
  for start in range(7):
    assert [r["record"] for r in source.read(start).as_numpy_iterator()] == records[start:]
  # Train: resized to 4x4, seekable.
  config = _ffhq_config(tmp_path, 4)
  reference = _take(datasets.train_iterator(config), 5)
  assert reference[0]["image"].shape == (4, 4, 4, 3)
  _assert_same_batches(_take(datasets.train_iterator(config, start_step=3), 2), reference[3:])


def test_tfrecords_pick_one_resolution(tmp_path):
  rng = np.random.default_rng(1)
  _write_records(tmp_path / "ffhq-r02.tfrecords", rng.integers(0, 256, (5, 3, 4, 4), dtype=np.uint8))
  _write_records(tmp_path / "ffhq-r03.tfrecords", rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8))
  files = data_sources.tfrecord_files(str(tmp_path), 8)
  assert [os.path.basename(f) for f in files] == ["ffhq-r03.tfrecords"]
  assert datasets.num_examples(_ffhq_config(tmp_path, 4), "train") == 5


# --------------------------------------------------------------------------------------------- errors
def test_unknown_dataset_names_the_choices():
  config = _cifar_config(dataset="MNIST")
  with pytest.raises(ValueError, match=r"data\.dataset='MNIST'.*CIFAR10.*DIGITS"):
    datasets.train_iterator(config)


def test_batch_size_must_split_over_processes():
  config = _digits_config(batch_size=10)
  with pytest.raises(ValueError, match=r"training\.batch_size=10"):
    datasets.train_iterator(config, process_count=3)
  with pytest.raises(ValueError, match=r"eval\.batch_size=7"):
    datasets.eval_iterator(config, batch_size=7, process_count=2)


def test_unprepared_tfds_dataset_is_one_clear_error(tmp_path):
  missing = tmp_path / "no_data_here"
  with pytest.raises(FileNotFoundError, match="cifar10") as info:
    datasets.train_iterator(_cifar_config(data_dir=str(missing)))
  message = str(info.value)
  assert str(missing) in message and "tfds build cifar10" in message and "data_dir" in message


def test_missing_tfrecords_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="tfrecords_path is empty"):
    datasets.train_iterator(_ffhq_config("", 8))
  with pytest.raises(FileNotFoundError, match="no \\*.tfrecords"):
    datasets.train_iterator(_ffhq_config(tmp_path, 8))


def test_tfrecords_of_another_kind_fail_in_one_line(tmp_path):
  """Records without the dataset tool's features, or of the wrong channel count, fail when the source opens
  (before: a traceback from inside the tf.data pipeline at the first batch)."""
  with tf.io.TFRecordWriter(str(tmp_path / "other.tfrecords")) as writer:
    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"]))}
    writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
  with pytest.raises(ValueError, match=r"^\S+other.tfrecords is not a ProGAN / StyleGAN dataset-tool TFRecord: its "
                     r"records have features \['image/encoded'\], expected 'shape'"):
    datasets.train_iterator(_ffhq_config(tmp_path / "other.tfrecords", 4))
  _write_records(tmp_path / "gray.tfrecords", np.zeros((2, 1, 4, 4), np.uint8))
  with pytest.raises(ValueError, match=r"holds 1-channel images \(shape \(1, 4, 4\), CHW\)"):
    datasets.train_iterator(_ffhq_config(tmp_path / "gray.tfrecords", 4))


def test_truncated_tfrecords_are_reported(tmp_path):
  images = np.zeros((3, 3, 4, 4), np.uint8)
  _write_records(tmp_path / "full.tfrecords", images)
  assert data_sources.count_records(str(tmp_path / "full.tfrecords")) == 3
  (tmp_path / "cut.tfrecords").write_bytes((tmp_path / "full.tfrecords").read_bytes()[:-5])
  with pytest.raises(ValueError, match="truncated after 2 records"):
    data_sources.count_records(str(tmp_path / "cut.tfrecords"))
