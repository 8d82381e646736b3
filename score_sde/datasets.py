"""Input pipelines: images as float32 NHWC numpy batches in [0, 1], deterministic and seekable. 

Sources (`config.data.dataset`):
  CIFAR10, SVHN, CELEBA, LSUN  TFDS `cifar10`, `svhn_cropped`, `celeb_a` (centre crop 140), `lsun/<category>`
                               (as 2021, below), read from `config.data.data_dir`, else $TFDS_DATA_DIR, else
                               the TFDS default. Nothing is ever downloaded.
  FFHQ, CelebAHQ               TFRecords (`shape` int64 [3] CHW, `data` raw uint8 CHW bytes) under
                               `config.data.tfrecords_path`; the same files serve train and eval.
  DIGITS                       scikit-learn's 1,797 8x8 digits, resized to image_size, 1 channel; embedded,
                               a fixed 1,500 / 297 train / test split.
Every image is resized (bilinear, antialiased) to image_size when its size differs, except LSUN, which follows
the Score SDE code (yang-song/score_sde, datasets.py) exactly, see `lsun_to_size`: at image_size 128 the
shorter side is resized to 128 (bilinear, antialiased) and the centre is cropped; at any other size the square
centre crop is resized with antialiased bicubic resampling and quantised back to uint8 (truncating).

Training stream. The stream of global batches is a pure function of (config.seed, step), so a run restarted
at step s sees bitwise the batches the uninterrupted run saw from step s on:
  * the epochs are concatenated; global batch k holds stream positions [kB, (k+1)B) (B =
    training.batch_size), and process i of P gets the consecutive slice [kB + i B/P, kB + (i+1) B/P);
  * epoch e visits the source in windows of `window` consecutive examples; each window is permuted by a
    stateless permutation keyed by (seed, e, window). For the in-memory digits the window is the whole set
    (a full shuffle); for streamed sources it bounds memory like a shuffle buffer does (tf.data's own
    shuffle would make the order depend on TF's global seed and cannot seek);
  * flips and dequantisation noise are keyed by (seed, stream position), never by iteration order;
  * resuming at step s starts in epoch sB // N at the window holding position sB (TFDS split slicing /
    TFRecord file offsets), so nothing before that window is re-read.

Eval stream: the split in its stored order, no flip; see `eval_iterator` for padding and repeats.
"""
import bisect
import functools
import math
import os
import re
import struct

import numpy as np

VALID_DATASETS = ("CIFAR10", "SVHN", "CELEBA", "LSUN", "FFHQ", "CelebAHQ", "DIGITS")

# Examples per shuffle window for streamed sources. Encoded PNG / JPEG images are small, so 10,000 (the
# reference's shuffle buffer) costs tens to a few hundred MB; raw TFRecords are sized by bytes instead.
TFDS_WINDOW = 10_000
LSUN_WINDOW = 2_000
TFRECORD_WINDOW_BYTES = 1 << 29

DIGITS_NUM_TRAIN = 1500
_DIGITS_SPLIT_SEED = 20210101  # fixed: the split must not move when config.seed does

# Stream ids: the data's randomness is keyed by (config.seed, stream id, ...), so it never coincides with
# the model's randomness derived from the same seed, nor train order with train augmentation.
_TRAIN_ORDER, _TRAIN_AUGMENT, _EVAL_AUGMENT = 0x5D01, 0x5D02, 0x5D03
_FOREVER = 1 << 62

# TFDS name, the TFDS split behind each of our split names, centre crop (pixels, "square" or None), labels.
# Generic "test" means the held-out split the reference evaluated on (validation for CelebA and LSUN).
_TFDS_SOURCES = {
    "CIFAR10": ("cifar10", {"train": "train", "test": "test"}, None, True),
    "SVHN": ("svhn_cropped", {"train": "train", "test": "test"}, None, True),
    "CELEBA": ("celeb_a", {"train": "train", "test": "validation", "validation": "validation"}, 140, False),
    "LSUN": (None, {"train": "train", "test": "validation", "validation": "validation"}, "square", False),
}


# ------------------------------------------------------------------------------------------------ scalers
def get_data_scaler(config):
  """Data in [0, 1] -> model space: [-1, 1] (2x - 1) when config.data.centered, else unchanged."""
  if config.data.centered:
    return lambda x: x * 2.0 - 1.0
  return lambda x: x


def get_data_inverse_scaler(config):
  """Model space -> [0, 1]; the inverse of `get_data_scaler`."""
  if config.data.centered:
    return lambda x: (x + 1.0) / 2.0
  return lambda x: x


# ------------------------------------------------------------------------------------------------- checks
def _check_dataset(config):
  name = config.data.dataset
  if name not in VALID_DATASETS:
    raise ValueError(f"data.dataset={name!r} is not one of {list(VALID_DATASETS)}.")
  want = 1 if name == "DIGITS" else 3
  if config.data.num_channels != want:
    raise ValueError(f"data.num_channels={config.data.num_channels} but {name} images have {want} channel(s).")
  return name


def _local_batch(global_batch, process_count, process_index, key):
  """Per-process batch; the global batch must split evenly so every process gets an equal slice."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is outside [0, process_count={process_count}).")
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(f"{key}={global_batch} must be a positive multiple of the process count ({process_count}).")
  return global_batch // process_count


def _split_name(split):
  if split not in ("train", "test", "validation"):
    raise ValueError(f"split={split!r} is not one of ['train', 'test', 'validation'].")
  return split


def _nonneg(seed):
  """SeedSequence and our int64 keys need a non-negative seed; wrap instead of rejecting negative ones."""
  return int(seed) % (1 << 63)


# -------------------------------------------------------------------------------------- digits (numpy)
def _resize_weights(n_in, n_out):
  """(n_out, n_in) bilinear weights, half-pixel centres, triangle widened by 1/scale when shrinking.

  This is TF's antialiased bilinear resize written out, so the digits need neither TF nor a GPU-dependent
  op and come out identical on every machine.
  """
  scale = n_out / n_in
  width = max(1.0, 1.0 / scale)
  centres = (np.arange(n_out) + 0.5) / scale - 0.5
  w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] - centres[:, None]) / width)
  return w / w.sum(axis=1, keepdims=True)


def resize_images_np(images, size):
  """Antialiased bilinear resize of (N, h, w[, C]) float images to (N, size, size[, C]), in float64."""
  if images.shape[1:3] == (size, size):
    return images.astype(np.float64)
  rows, cols = _resize_weights(images.shape[1], size), _resize_weights(images.shape[2], size)
  return np.einsum("ih,nhw...,jw->nij...", rows, images.astype(np.float64), cols)


@functools.lru_cache(maxsize=4)
def _digits(image_size, split):
  """(images (n, S, S, 1) float32 in [0, 1], labels (n,) int32) for one split of the embedded digits."""
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

  bunch = load_digits()
  images = resize_images_np(bunch.images / 16.0, image_size)
  # On the 8-bit grid like every other data set (uint8 / 255): bits/dim dequantises with 1/256 bins and the
  # DDPM bound's decoder integrates over them, both assuming 256 levels per pixel.
  images = (np.round(np.clip(images, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)[..., None]
  order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(images))
  idx = order[:DIGITS_NUM_TRAIN] if split == "train" else order[DIGITS_NUM_TRAIN:]
  images, labels = images[idx], bunch.target[idx].astype(np.int32)
  images.flags.writeable = labels.flags.writeable = False  # cached: callers must not edit it in place
  return images, labels


def _np_augment(images, positions, keys, flip, dequantize):
  """Per-example flip / dequantisation, each drawn from a Generator keyed by (keys..., position)."""
  out = np.array(images, dtype=np.float32)
  for i, pos in enumerate(positions):
    rng = np.random.default_rng([*keys, int(pos)])
    do_flip = rng.random() < 0.5  # drawn even when unused, so the noise below never depends on `flip`
    if flip and do_flip:
      out[i] = out[i, :, ::-1]
    if dequantize:
      noise = rng.random(out.shape[1:], dtype=np.float32)
      out[i] = (noise + 255.0 * out[i]) / 256.0
  return out


def _np_train(images, labels, config, start_step, batch, local, process_index):
  """Training batches of an in-memory set: epoch e is a full permutation keyed by (seed, e)."""
  n, seed = len(images), _nonneg(config.seed)
  perms = {}
  step = start_step
  while True:
    pos = step * batch + process_index * local + np.arange(local)
    epochs, within = np.divmod(pos, n)
    for e in set(epochs.tolist()) - set(perms):
      perms[e] = np.random.default_rng([seed, _TRAIN_ORDER, e]).permutation(n)
    for e in [e for e in perms if e < epochs.min()]:
      del perms[e]  # only the current (and, at a boundary, the next) epoch is ever needed
    idx = np.array([perms[e][j] for e, j in zip(epochs.tolist(), within.tolist())])
    image = _np_augment(images[idx], pos, (seed, _TRAIN_AUGMENT), config.data.random_flip,
                        config.data.uniform_dequantization)
    yield {"image": image, "label": labels[idx]}
    step += 1


def _np_eval(images, labels, config, batch, local, process_index, repeat, dequantize, start_batch, pass_index):
  """Eval batches of an in-memory set in stored order; see `eval_iterator`."""
  n, seed = len(images), _nonneg(config.seed)
  stop = _FOREVER if repeat else -(-n // batch) * batch
  for start in range(start_batch * batch, stop, batch):
    pos = start + process_index * local + np.arange(local)
    passes, within = np.divmod(pos, n)
    real = np.ones(local, bool) if repeat else pos < n
    idx = np.where(real, within, 0)
    image = np.array(images[idx], dtype=np.float32)
    if dequantize:
      for i in np.flatnonzero(real):
        rng = np.random.default_rng([seed, _EVAL_AUGMENT, pass_index + int(passes[i]), int(within[i])])
        image[i] = (rng.random(image.shape[1:], dtype=np.float32) + 255.0 * image[i]) / 256.0
    image[~real] = 0.0
    yield {"image": image, "label": np.where(real, labels[idx], 0).astype(np.int32),
           "mask": real.astype(np.float32)}


# ----------------------------------------------------------------------------------------- tf sources
def _tf():
  """TensorFlow, imported lazily (the digits path never needs it) and kept off the accelerators."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # TF was initialised already; whoever did it chose its devices
  return tf


def _tfds_data_dir(config):
  return config.data.get("data_dir", "") or os.environ.get("TFDS_DATA_DIR") or None


class _TfdsSource:
  """One TFDS split read in stored order (files one after another), with the image left encoded.

  Encoded images keep shuffle windows small; `read(start)` uses TFDS split slicing, which jumps over whole
  shards, so a resume never re-reads the data before it.
  """

  def __init__(self, config, split):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    self._tf, self._tfds = _tf(), tfds
    name, splits, self.crop, self.has_label = _TFDS_SOURCES[config.data.dataset]
    if name is None:
      name = f"lsun/{config.data.get('category', 'bedroom')}"
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
    tf = self._tf
    image = tf.io.decode_image(raw["image"], channels=3, expand_animations=False)
    if self.name.startswith("lsun/"):
      out = {"image": lsun_to_size(tf, image, self.size)}
    else:
      out = {"image": _tf_to_size(tf, image, self.crop, self.size)}
    if self.has_label:
      out["label"] = tf.cast(raw["label"], tf.int32)
    return out


def _tfrecord_files(path, image_size):
  """The *.tfrecords to read: a file, a glob, or a folder (one resolution of ProGAN's -rNN files)."""
  tf = _tf()
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


def _count_records(path):
  """Number of records in a TFRecord file, read from the length headers only (no payload is read)."""
  tf = _tf()
  size, count, pos = tf.io.gfile.stat(path).length, 0, 0
  with tf.io.gfile.GFile(path, "rb") as f:
    while pos < size:
      f.seek(pos)
      header = f.read(12)  # uint64 payload length + uint32 masked crc of the length
      pos += 12 + (struct.unpack("<Q", header[:8])[0] if len(header) == 12 else size) + 4  # + payload crc
      if pos > size:
        raise ValueError(f"TFRecord file {path!r} is truncated after {count} records.")
      count += 1
  return count


class _TFRecordSource:
  """ProGAN / StyleGAN TFRecords (CHW uint8), read in file order; the same files serve train and eval."""

  def __init__(self, config):
    self._tf = _tf()
    self.crop, self.has_label, self.size = None, False, config.data.image_size
    self.files = _tfrecord_files(config.data.get("tfrecords_path", ""), self.size)
    counts = [_count_records(f) for f in self.files]
    self.n = sum(counts)
    if self.n == 0:
      raise ValueError(f"data.tfrecords_path={config.data.tfrecords_path!r}: the *.tfrecords files are empty.")
    self._starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    total_bytes = sum(self._tf.io.gfile.stat(f).length for f in self.files)
    self.window = int(np.clip(TFRECORD_WINDOW_BYTES * self.n // max(total_bytes, 1), 256, TFDS_WINDOW))

  def read(self, start):
    """Raw records from index `start` on: whole files before it are never opened."""
    i = bisect.bisect_right(self._starts, start) - 1
    ds = self._tf.data.TFRecordDataset(self.files[i:]).skip(start - self._starts[i])
    return ds.map(lambda record: {"record": record})

  def decode(self, raw):
    tf = self._tf
    ex = tf.io.parse_single_example(raw["record"], {"shape": tf.io.FixedLenFeature([3], tf.int64),
                                                    "data": tf.io.FixedLenFeature([], tf.string)})
    image = tf.transpose(tf.reshape(tf.io.decode_raw(ex["data"], tf.uint8), ex["shape"]), [1, 2, 0])
    image = tf.ensure_shape(image, [None, None, 3])  # FFHQ / CelebA-HQ are RGB; batching needs C statically
    return {"image": _tf_to_size(tf, image, None, self.size)}


def _tf_to_size(tf, image, crop, size):
  """uint8 HWC -> float32 (size, size, C) in [0, 1]: optional centre crop, then antialiased resize."""
  image = tf.cast(image, tf.float32) / 255.0
  channels = image.shape[-1]
  if crop is not None:
    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1]) if crop == "square" else crop
    image = tf.image.crop_to_bounding_box(image, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side)
  shape = tf.shape(image)
  same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
  image = tf.cond(same, lambda: image,
                  lambda: tf.image.resize(image, [size, size], method="bilinear", antialias=True))
  image = tf.clip_by_value(image, 0.0, 1.0)  # resampling can round a hair past the ends
  return tf.ensure_shape(image, [size, size, channels])


LSUN_SMALL_SIDE_SIZE = 128  # the one image_size at which the Score SDE code resizes LSUN's shorter side


def lsun_to_size(tf, image, size):
  """uint8 HWC LSUN image -> float32 (size, size, 3) in [0, 1], as the Score SDE code (2021) preprocesses LSUN.

  yang-song/score_sde, datasets.py, `get_dataset` for 'LSUN':
    * size 128: `convert_image_dtype` to float, `resize_small` (the shorter side to `size`, the other to
      round(side * size / shorter) rounded half to even as `tf.round` does; `tf.image.resize` with
      antialias=True and its default bilinear method), then `central_crop` (top = (H - size) // 2, left =
      (W - size) // 2);
    * any other size: `crop_resize` on the uint8 image (the square centre crop of side min(H, W), from
      (H - side) // 2, (W - side) // 2; `tf.image.resize(..., antialias=True, method=BICUBIC)`, which works in
      float32 pixel units 0..255; `tf.cast(image, tf.uint8)`, truncating toward zero), then
      `convert_image_dtype` to float32 (x * (1 / 255)).
  Two departures, both where 2021's result is not defined by its code:
    * bicubic resampling overshoots near edges, below 0 and above 255. `tf.cast` of such floats to uint8 is
      undefined behaviour in C++ and TF is inconsistent about it: on CPU (TF 2.21) elements cast in
      vectorised blocks of 32 saturate to 0 / 255 while the remaining tail elements wrap modulo 256 (-1.5 ->
      255, 256.5 -> 0). We clip to [0, 255] before the truncating cast, i.e. saturate everywhere, which is
      what every block-aligned image (H W 3 a multiple of 32, e.g. 256 x 256 or 64 x 64) gets from TF;
    * 2021's `resize_small` / `central_crop` read static shapes and pass tf.int32 as `tf.round`'s `name`, so
      inside a tf.data map (unknown image shape) they raise; we compute the same sizes and offsets from the
      dynamic shape. The float result is clipped to [0, 1] (bilinear weights are positive and sum to one,
      so this moves a value by at most a rounding error).
  """
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  if size == LSUN_SMALL_SIDE_SIZE:
    image = tf.image.convert_image_dtype(image, tf.float32)
    ratio = size / tf.cast(tf.minimum(h, w), tf.float64)
    # As 2021: the float64 product h * ratio, made a float32 tensor, rounded half to even.
    new_size = lambda n: tf.cast(tf.round(tf.cast(tf.cast(n, tf.float64) * ratio, tf.float32)), tf.int32)
    new_h, new_w = new_size(h), new_size(w)
    image = tf.image.resize(image, tf.stack([new_h, new_w]), antialias=True)
    image = tf.image.crop_to_bounding_box(image, (new_h - size) // 2, (new_w - size) // 2, size, size)
    image = tf.clip_by_value(image, 0.0, 1.0)
  else:
    side = tf.minimum(h, w)
    image = image[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
    image = tf.image.resize(image, [size, size], antialias=True, method=tf.image.ResizeMethod.BICUBIC)
    image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
    image = tf.image.convert_image_dtype(image, tf.float32)
  return tf.ensure_shape(image, [size, size, 3])


def _make_source(config, split):
  if config.data.dataset in ("FFHQ", "CelebAHQ"):
    return _TFRecordSource(config)
  return _TfdsSource(config, split)


# ------------------------------------------------------------------------------------- tf pipelines
def _key(tf, seed, stream):
  return tf.constant([_nonneg(seed), stream], tf.int64)


def _fold(tf, key, data):
  return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64), alg="philox")


def _tf_dequantize(tf, image, key):
  """(u + 255 x) / 256 with u ~ U[0, 1) drawn from `key` (Song et al. 2021, App. D.2; Ho et al. 2020, §4)."""
  noise = tf.random.stateless_uniform(tf.shape(image), _fold(tf, key, 1), alg="philox")
  return (noise + 255.0 * image) / 256.0


def _tf_augment(tf, example, key, flip, dequantize):
  image = example["image"]
  if flip:
    coin = tf.random.stateless_uniform([], _fold(tf, key, 0), alg="philox")
    image = tf.cond(coin < 0.5, lambda: tf.reverse(image, axis=[1]), lambda: image)
  if dequantize:
    image = _tf_dequantize(tf, image, key)
  return {**example, "image": image}


def _permute_window(tf, window, key):
  """Shuffles one window (a batch of raw examples) by the stateless permutation keyed by `key`."""
  n = tf.shape(tf.nest.flatten(window)[0], out_type=tf.int64)[0]
  perm = tf.random.experimental.index_shuffle(tf.range(n), key, n - 1)
  return tf.nest.map_structure(lambda t: tf.gather(t, perm), window)


def _own(tf, batch, local, process_index):
  """Keeps the stream positions that fall in this process's slice of each global batch."""
  return lambda pos, _: tf.equal((pos % batch) // local, process_index)


def _finish(tf, ds):
  options = tf.data.Options()
  options.deterministic = True  # parallel maps must not reorder: the order is part of the contract
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _tf_train(src, config, start_step, batch, local, process_index):
  """The training stream of a streamed source as a tf.data pipeline (see the module docstring)."""
  tf = src._tf  # pylint: disable=protected-access
  n, window = src.n, src.window
  pos0 = start_step * batch
  epoch0, offset = divmod(pos0, n)
  window0 = offset // window
  order_key = _key(tf, config.seed, _TRAIN_ORDER)
  augment_key = _key(tf, config.seed, _TRAIN_AUGMENT)

  def epoch(e, raw, first_window):
    epoch_key = _fold(tf, order_key, e)
    windows = raw.batch(window).enumerate(start=first_window)
    return windows.map(lambda w, ex: _permute_window(tf, ex, _fold(tf, epoch_key, w))).unbatch()

  first = epoch(epoch0, src.read(window0 * window), window0).skip(offset - window0 * window)
  whole = src.read(0)  # built once here, not inside flat_map's traced function
  rest = tf.data.Dataset.range(epoch0 + 1, _FOREVER).flat_map(lambda e: epoch(e, whole, 0))
  ds = first.concatenate(rest).enumerate(start=pos0).filter(_own(tf, batch, local, process_index))
  flip, dequantize = config.data.random_flip, config.data.uniform_dequantization
  ds = ds.map(lambda pos, raw: _tf_augment(tf, src.decode(raw), _fold(tf, augment_key, pos), flip, dequantize),
              num_parallel_calls=tf.data.AUTOTUNE)
  return _finish(tf, ds.batch(local, drop_remainder=True))


def _tf_eval(src, config, batch, local, process_index, repeat, dequantize, start_batch, pass_index):
  """The eval stream of a streamed source; see `eval_iterator`."""
  tf = src._tf  # pylint: disable=protected-access
  n = src.n
  pos0 = start_batch * batch
  pass0, offset = divmod(pos0, n)
  eval_key = _key(tf, config.seed, _EVAL_AUGMENT)
  if repeat:
    whole = src.read(0)
    ds = src.read(offset).concatenate(tf.data.Dataset.range(pass0 + 1, _FOREVER).flat_map(lambda _: whole))
  else:
    ds = src.read(offset) if pass0 == 0 else src.read(0).take(0)
  ds = ds.enumerate(start=pos0).filter(_own(tf, batch, local, process_index))

  def prepare(pos, raw):
    example = src.decode(raw)
    if dequantize:
      key = _fold(tf, _fold(tf, eval_key, pass_index + pos // n), pos % n)
      example["image"] = _tf_dequantize(tf, example["image"], key)
    return {**example, "mask": tf.constant(1.0)}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  if not repeat:  # pad the last global batch with masked zeros so every example is seen exactly once
    padded = -(-n // batch) * batch
    spec = ds.element_spec
    pads = tf.data.Dataset.range(max(n, pos0), padded).filter(lambda p: tf.equal((p % batch) // local,
                                                                                  process_index))
    ds = ds.concatenate(pads.map(lambda _: {k: tf.zeros(s.shape, s.dtype) for k, s in spec.items()}))
  return _finish(tf, ds.batch(local, drop_remainder=True))


# ---------------------------------------------------------------------------------------------- public
def num_examples(config, split="train"):
  """Examples in a split of config.data.dataset (before padding or batching)."""
  name = _check_dataset(config)
  split = _split_name(split)
  if name == "DIGITS":
    return len(_digits(config.data.image_size, "train" if split == "train" else "test")[0])
  return _make_source(config, split).n


def train_iterator(config, *, start_step=0, process_index=0, process_count=1):
  """Endless training batches {'image': float32 (B/P, S, S, C) in [0, 1][, 'label': int32 (B/P,)]}.

  Batch k (k = start_step, start_step + 1, ...) is this process's slice of global batch k, a pure function
  of (config.seed, k): see the module docstring. Random flips follow config.data.random_flip and uniform
  dequantisation config.data.uniform_dequantization. Streamed sources run ahead of the consumer (tf.data
  prefetch); every process reads the whole raw stream but decodes only its own slice.
  """
  name = _check_dataset(config)
  local = _local_batch(config.training.batch_size, process_count, process_index, "training.batch_size")
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0.")
  batch = config.training.batch_size
  if name == "DIGITS":
    images, labels = _digits(config.data.image_size, "train")
    return _np_train(images, labels, config, start_step, batch, local, process_index)
  ds = _tf_train(_make_source(config, "train"), config, start_step, batch, local, process_index)
  return ds.as_numpy_iterator()


def eval_iterator(config, split="test", *, process_index=0, process_count=1, repeat=False, batch_size=None,
                  dequantize=None, start_batch=0, pass_index=0):
  """Eval batches in the split's stored order, no flip: {'image', 'mask' float32 (b,)[, 'label']}.

  split: 'train', or 'test' for the held-out split (CIFAR-10 / SVHN test, CelebA / LSUN validation, the
    digits' fixed test part; FFHQ / CelebA-HQ reuse their one set of files), or 'validation' where it exists.
  repeat=False: one pass; the last global batch is padded to full size with zero images whose mask is 0,
    so averages taken with the mask count every example exactly once. repeat=True: passes follow each other
    without padding (a batch may straddle two passes) and mask is all ones.
  batch_size: the global batch (default config.eval.batch_size); each process gets batch_size / P.
  dequantize: uniform dequantisation (default config.data.uniform_dequantization). Its noise is keyed by
    (config.seed, pass_index + pass, example index), so repeated passes (e.g. the 5 bpd passes, via
    repeat=True or pass_index) see fresh noise, and a given pass is reproducible.
  start_batch: the first global batch to produce (to resume a repeating eval stream).
  """
  name = _check_dataset(config)
  split = _split_name(split)
  batch = config.eval.batch_size if batch_size is None else batch_size
  local = _local_batch(batch, process_count, process_index, "eval.batch_size")
  dequantize = config.data.uniform_dequantization if dequantize is None else dequantize
  args = (config, batch, local, process_index, repeat, dequantize, start_batch, pass_index)
  if name == "DIGITS":
    images, labels = _digits(config.data.image_size, "train" if split == "train" else "test")
    return _np_eval(images, labels, *args)
  return _tf_eval(_make_source(config, split), *args).as_numpy_iterator()
