"""Input pipelines: images as float32 NHWC numpy batches in [0, 1], deterministic and seekable. 

Sources (`config.data.dataset`):
  CIFAR10, SVHN, CELEBA, LSUN  TFDS `cifar10`, `svhn_cropped`, `celeb_a` (centre crop 140), `lsun/<category>`
                               (as 2021, below), read from `config.data.data_dir`, else $TFDS_DATA_DIR, else
                               the TFDS default. Nothing is ever downloaded.
  FFHQ, CelebAHQ               TFRecords (`shape` int64 [3] CHW, `data` raw uint8 CHW bytes) under
                               `config.data.tfrecords_path`; the same files serve train and eval.
  DIGITS                       scikit-learn's 1,797 8x8 digits, resized to image_size, 1 channel; embedded,
                               a fixed 1,500 / 297 train / test split.
  IMAGE_FOLDER                 a user's folder of images, `config.data.image_folder` (`<folder>/train` and
                               `<folder>/test` when present, else `data.eval_fraction` held out; class
                               subfolders give labels), 1 or 3 channels (data.num_channels), as LSUN below.
  TFRECORDS                    a user's TFRecords of encoded images (`data.tfrecords_path`, the features
                               `data.tfrecords_image_key` / `_label_key`, eval files `data.tfrecords_eval_path`),
                               1 or 3 channels, as LSUN below. Both: see `score_sde.data_user_sources`.
Every image is resized (bilinear, antialiased) to image_size when its size differs, except LSUN and users' data,
which follow the Score SDE code (yang-song/score_sde, datasets.py) exactly, see `lsun_to_size`: at image_size
128 the shorter side is resized to 128 (bilinear, antialiased) and the centre is cropped; at any other size the
square centre crop is resized with antialiased bicubic resampling and quantised back to uint8 (truncating).

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

A failure to read or decode data mid-stream (a damaged file) ends iteration with a one-line ValueError.

The modules behind it: `data_digits` (the embedded digits and their numpy streams), `data_sources` (TFDS and
TFRecord sources), `data_user_sources` (users' folders and TFRecords), `data_preprocessing` (decoding, crops,
resizes, LSUN), `data_pipelines` (the tf.data streams) and `data_keys` (the keys of the data's randomness).
"""
import re

from score_sde import data_user_sources
from score_sde.data_digits import digits, eval_batches, resize_images_np, train_batches
from score_sde.data_pipelines import eval_stream, train_stream
from score_sde.data_preprocessing import lsun_to_size
from score_sde.data_sources import make_source
from score_sde.data_user_sources import USER_SOURCES, make_user_source

__all__ = ["VALID_DATASETS", "check_available", "data_digest", "eval_iterator", "get_data_inverse_scaler",
           "get_data_scaler", "lsun_to_size", "num_examples", "resize_images_np", "train_iterator"]

VALID_DATASETS = ("CIFAR10", "SVHN", "CELEBA", "LSUN", "FFHQ", "CelebAHQ", "DIGITS") + USER_SOURCES


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
  if name in USER_SOURCES:
    if config.data.num_channels not in (1, 3):
      raise ValueError(f"data.num_channels={config.data.num_channels}: {name} images are read as grey (1) or "
                       "RGB (3); set --config.data.num_channels to 1 or 3.")
    return name
  want = 1 if name == "DIGITS" else 3
  if config.data.num_channels != want:
    raise ValueError(f"data.num_channels={config.data.num_channels} but {name} images have {want} channel(s).")
  return name


def _source(config, split):
  if config.data.dataset in USER_SOURCES:
    return make_user_source(config, split)
  return make_source(config, split)


def _batches(src, ds):
  """The numpy batches of `ds`; its iterator is made now, so it starts reading ahead at once."""
  return _one_line_data_errors(src.tf, ds.as_numpy_iterator())


def _one_line_data_errors(tf, iterator):
  """Yields from `iterator`; a TF read or decode failure (a damaged file, a record of another kind) becomes a
  one-line ValueError: the reason TF gives, without its graph context."""
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      raise ValueError(f"reading the data failed: {_tf_reason(e.message)} (a damaged file among the data's "
                       "files: replace or remove it).") from None
    yield batch


def _tf_reason(message):
  """The reason in a tf.data error message: its first line without TF's node names and iterator path, an
  assertion's bracketed parts joined."""
  text = re.sub(r"\{\{[^}]*\}\}", "", str(message)).split("\n")[0]
  text = re.sub(r"^.*transformation with iterator: \S+: ", "", text)
  asserted = re.match(r"\s*assertion failed: (.*)", text)
  if asserted:
    text = " ".join(re.findall(r"\[(.*?)\]", asserted.group(1)))
  return " ".join(text.split())


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


# ---------------------------------------------------------------------------------------------- public
def num_examples(config, split="train"):
  """Examples in a split of config.data.dataset (before padding or batching)."""
  name = _check_dataset(config)
  split = _split_name(split)
  if name == "DIGITS":
    return len(digits(config.data.image_size, "train" if split == "train" else "test")[0])
  return _source(config, split).n


def check_available(config, split=None):
  """Raises the data's one-line error (unknown data set, wrong channel count, TFDS data not prepared, TFRecords
  without the expected features, a missing or empty image folder) before anything is written; reads no batch.

  split: the one split to check; None checks both a training run reads, 'train' and 'test' (its eval loss).
  """
  if _check_dataset(config) != "DIGITS":
    for one in ("train", "test") if split is None else (_split_name(split),):
      _source(config, one)


def data_digest(config):
  """A short digest naming the training data of a user's data set (its files), None for the built-in ones: two
  folders of the same data set name (e.g. two IMAGE_FOLDERs) differ here, e.g. in their reference statistics."""
  if _check_dataset(config) not in USER_SOURCES:
    return None
  return data_user_sources.data_digest(config)


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
    images, labels = digits(config.data.image_size, "train")
    return train_batches(images, labels, config, start_step, batch, local, process_index)
  src = _source(config, "train")
  return _batches(src, train_stream(src, config, start_step, batch, local, process_index))


def eval_iterator(config, split="test", *, process_index=0, process_count=1, repeat=False, batch_size=None,
                  dequantize=None, start_batch=0, pass_index=0):
  """Eval batches in the split's stored order, no flip: {'image', 'mask' float32 (b,)[, 'label']}.

  split: 'train', or 'test' for the held-out split (CIFAR-10 / SVHN test, CelebA / LSUN validation, the
    digits' fixed test part; FFHQ / CelebA-HQ reuse their one set of files; users' data: the held-out part,
    see `score_sde.data_user_sources`), or 'validation' where it exists.
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
    images, labels = digits(config.data.image_size, "train" if split == "train" else "test")
    return eval_batches(images, labels, *args)
  src = _source(config, split)
  return _batches(src, eval_stream(src, *args))
