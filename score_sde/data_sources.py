"""The streamed sources: TFDS splits and ProGAN / StyleGAN TFRecords, read in stored order and seekable.
(Users' folders of images and TFRecords of encoded images: `score_sde.data_user_sources`.)

A source has `n` (examples), `window` (examples per shuffle window), `read(start)` (a tf.data stream of raw
examples from index `start` on, never reading what lies before it) and `decode(raw)` (a raw example ->
{'image': float32 (S, S, C) in [0, 1][, 'label': int32]}). TensorFlow is imported lazily (`import_tf`), so
the digits path never needs it.
"""
import bisect
import math
import os
import re
import struct

import numpy as np

from score_sde import settings
from score_sde.data_preprocessing import lsun_to_size, tf_to_size

# Examples per shuffle window for streamed sources. Encoded PNG / JPEG images are small, so 10,000 (the
# reference's shuffle buffer) costs tens to a few hundred MB; raw TFRecords are sized by bytes instead.
TFDS_WINDOW = 10_000
LSUN_WINDOW = 2_000
TFRECORD_WINDOW_BYTES = 1 << 29

# TFDS name, the TFDS split behind each of our split names, centre crop (pixels, "square" or None), labels.
# Generic "test" means the held-out split the reference evaluated on (validation for CelebA and LSUN).
TFDS_SOURCES = {
    "CIFAR10": ("cifar10", {"train": "train", "test": "test"}, None, True),
    "SVHN": ("svhn_cropped", {"train": "train", "test": "test"}, None, True),
    "CELEBA": ("celeb_a", {"train": "train", "test": "validation", "validation": "validation"}, 140, False),
    "LSUN": (None, {"train": "train", "test": "validation", "validation": "validation"}, "square", False),
}


def import_tf():
  """TensorFlow, imported lazily and kept off the accelerators."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # TF was initialised already; whoever did it chose its devices
  return tf


def _tfds_data_dir(config):
  return settings.DataSettings.from_config(config).data_dir or os.environ.get("TFDS_DATA_DIR") or None


class TfdsSource:
  """One TFDS split read in stored order (files one after another), with the image left encoded.

  Encoded images keep shuffle windows small; `read(start)` uses TFDS split slicing, which jumps over whole
  shards, so a resume never re-reads the data before it.
  """

  def __init__(self, config, split):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    self.tf, self._tfds = import_tf(), tfds
    name, splits, self.crop, self.has_label = TFDS_SOURCES[config.data.dataset]
    if name is None:
      name = f"lsun/{settings.DataSettings.from_config(config).category}"
    if split not in splits:
      raise ValueError(f"split={split!r} is not available for {config.data.dataset}; use one of {list(splits)}.")
    self.name, self.split, self.size = name, splits[split], config.data.image_size
    self.window = LSUN_WINDOW if config.data.dataset == "LSUN" else TFDS_WINDOW
    self._builder = self._make_builder(config)
    self.n = self._count()

  def _make_builder(self, config):
    data_dir = _tfds_data_dir(config)
    try:
      builder = self._tfds.builder(self.name, data_dir=data_dir)
    except Exception as err:  # pylint: disable=broad-except  (TFDS raises several types for a bad name)
      hint = " (check data.category)" if self.name.startswith("lsun/") else ""
      reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
      raise ValueError(f"TFDS has no dataset {self.name!r}{hint}: {reason}") from None
    return builder

  def _as_dataset(self, split):
    tfds = self._tfds
    try:
      return self._builder.as_dataset(
          split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()},
          # One file after another: a fixed order. No autocache: each epoch re-reads (the OS caches files),
          # which keeps memory flat for the partial reads a resume makes.
          read_config=tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False))
    except AssertionError:  # how TFDS reports "not prepared"; its traceback would bury the fix
      root = str(getattr(self._builder, "data_dir_root", None) or self._builder.data_dir)
      raise FileNotFoundError(
          f"TFDS dataset {self.name!r} is not prepared in data_dir {root!r} and is never downloaded here: "
          f"build it on a machine with internet (`tfds build {self.name} --data_dir DIR`), copy DIR over and "
          f"pass --config.data.data_dir=DIR (or set TFDS_DATA_DIR).") from None

  def _count(self):
    n = int(self._as_dataset(self.split).cardinality())
    if n < 0:  # unknown cardinality: fall back to the split's metadata
      n = int(self._builder.info.splits[self.split].num_examples)
    if n <= 0:
      raise ValueError(f"TFDS split {self.name}:{self.split} is empty.")
    return n

  def read(self, start):
    """Raw examples from index `start` on, in stored order."""
    ds = self._as_dataset(f"{self.split}[{start}:]" if start else self.split)
    keys = ("image", "label") if self.has_label else ("image",)
    return ds.map(lambda ex: {k: ex[k] for k in keys})  # drop CelebA's attributes before windowing

  def decode(self, raw):
    """Raw example -> {'image': float32 (S, S, 3) in [0, 1][, 'label': int32]}."""
    tf = self.tf
    image = tf.io.decode_image(raw["image"], channels=3, expand_animations=False)
    if self.name.startswith("lsun/"):
      out = {"image": lsun_to_size(tf, image, self.size)}
    else:
      out = {"image": tf_to_size(tf, image, self.crop, self.size)}
    if self.has_label:
      out["label"] = tf.cast(raw["label"], tf.int32)
    return out


def tfrecord_files(path, image_size):
  """The *.tfrecords to read: a file, a glob, or a folder (one resolution of ProGAN's -rNN files)."""
  tf = import_tf()
  if not path:
    raise FileNotFoundError("data.tfrecords_path is empty: set --config.data.tfrecords_path to the folder (or "
                            "file) of *.tfrecords written by the ProGAN / StyleGAN dataset tool.")
  if tf.io.gfile.isdir(path):
    files = tf.io.gfile.glob(os.path.join(path, "*.tfrecords"))
  else:
    files = tf.io.gfile.glob(path)
  files = sorted(files)
  if not files:
    raise FileNotFoundError(f"data.tfrecords_path={path!r} holds no *.tfrecords files.")
  # The dataset tool writes every resolution of the same images as <name>-rNN.tfrecords (NN = log2 size):
  # reading all of them would repeat each image at several sizes, so keep the closest one >= image_size.
  tags = [re.search(r"-r(\d+)\.tfrecords$", f) for f in files]
  levels = sorted({int(t.group(1)) for t in tags if t})
  if all(tags) and len(levels) > 1:
    want = math.ceil(math.log2(image_size))
    level = min([lv for lv in levels if lv >= want] or [levels[-1]])
    files = [f for f, t in zip(files, tags) if int(t.group(1)) == level]
  return files


def count_records(path):
  """Number of records in a TFRecord file, read from the length headers only (no payload is read)."""
  tf = import_tf()
  size, count, pos = tf.io.gfile.stat(path).length, 0, 0
  with tf.io.gfile.GFile(path, "rb") as f:
    while pos < size:
      f.seek(pos)
      header = f.read(12)  # uint64 payload length + uint32 masked crc of the length
      pos += 12 + (struct.unpack("<Q", header[:8])[0] if len(header) == 12 else size) + 4  # + payload crc
      if pos > size:
        raise ValueError(f"TFRecord file {path!r} is truncated after {count} records (or is not an uncompressed "
                         "TFRecord file).")
      count += 1
  return count


def record_window(n, total_bytes):
  """Examples per shuffle window of `n` records in `total_bytes`: about TFRECORD_WINDOW_BYTES of them."""
  return int(np.clip(TFRECORD_WINDOW_BYTES * n // max(total_bytes, 1), 256, TFDS_WINDOW))


def records_from(tf, files, starts, start):
  """{'record'} from index `start` on of the records of `files` (file i's first record is index starts[i]):
  whole files before it are never opened."""
  i = bisect.bisect_right(starts, start) - 1
  ds = tf.data.TFRecordDataset(files[i:]).skip(start - starts[i])
  return ds.map(lambda record: {"record": record})


class TFRecordSource:
  """ProGAN / StyleGAN TFRecords (CHW uint8), read in file order; the same files serve train and eval."""

  def __init__(self, config):
    self.tf = import_tf()
    self.crop, self.has_label, self.size = None, False, config.data.image_size
    self.files = tfrecord_files(settings.DataSettings.from_config(config).tfrecords_path, self.size)
    counts = [count_records(f) for f in self.files]
    self.n = sum(counts)
    if self.n == 0:
      raise ValueError(f"data.tfrecords_path={config.data.tfrecords_path!r}: the *.tfrecords files are empty.")
    self._check_first_record()
    self._starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    self.window = record_window(self.n, sum(self.tf.io.gfile.stat(f).length for f in self.files))

  def _check_first_record(self):
    """Reads the first record eagerly, so that files of another kind fail here in one line, not mid-pipeline."""
    tf, first = self.tf, self.files[0]
    raw = next(iter(tf.data.TFRecordDataset([first]).take(1))).numpy()
    example = tf.train.Example.FromString(raw)
    features = example.features.feature
    if "shape" not in features or "data" not in features or len(features["shape"].int64_list.value) != 3:
      raise ValueError(f"{first} is not a ProGAN / StyleGAN dataset-tool TFRecord: its records have features "
                       f"{sorted(features)}, expected 'shape' (C, H, W) and 'data' (raw uint8).")
    shape = tuple(features["shape"].int64_list.value)
    if shape[0] != 3:
      raise ValueError(f"{first} holds {shape[0]}-channel images (shape {shape}, CHW); FFHQ / CelebA-HQ "
                       "TFRecords are read as RGB: write them with 3 channels.")

  def read(self, start):
    """Raw records from index `start` on: whole files before it are never opened."""
    return records_from(self.tf, self.files, self._starts, start)

  def decode(self, raw):
    tf = self.tf
    ex = tf.io.parse_single_example(raw["record"], {"shape": tf.io.FixedLenFeature([3], tf.int64),
                                                    "data": tf.io.FixedLenFeature([], tf.string)})
    image = tf.transpose(tf.reshape(tf.io.decode_raw(ex["data"], tf.uint8), ex["shape"]), [1, 2, 0])
    image = tf.ensure_shape(image, [None, None, 3])  # FFHQ / CelebA-HQ are RGB; batching needs C statically
    return {"image": tf_to_size(tf, image, None, self.size)}


def make_source(config, split):
  """The streamed source of the built-in `config.data.dataset` for `split` (FFHQ / CelebA-HQ: their one set of
  files); users' data sets are `data_user_sources.make_user_source`'s."""
  if config.data.dataset in ("FFHQ", "CelebAHQ"):
    return TFRecordSource(config)
  return TfdsSource(config, split)
