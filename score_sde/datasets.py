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

The modules behind it: `data_digits` (the embedded digits and their numpy streams), `data_sources` (TFDS and
TFRecord sources), `data_preprocessing` (crops, resizes, LSUN), `data_pipelines` (the tf.data streams) and
`data_keys` (the keys of the data's randomness).
"""
from score_sde.data_digits import digits, eval_batches, resize_images_np, train_batches
from score_sde.data_pipelines import eval_stream, train_stream
from score_sde.data_preprocessing import lsun_to_size
from score_sde.data_sources import make_source

__all__ = ["VALID_DATASETS", "eval_iterator", "get_data_inverse_scaler", "get_data_scaler", "lsun_to_size",
           "num_examples", "resize_images_np", "train_iterator"]

VALID_DATASETS = ("CIFAR10", "SVHN", "CELEBA", "LSUN", "FFHQ", "CelebAHQ", "DIGITS")


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


# ---------------------------------------------------------------------------------------------- public
def num_examples(config, split="train"):
  """Examples in a split of config.data.dataset (before padding or batching)."""
  name = _check_dataset(config)
  split = _split_name(split)
  if name == "DIGITS":
    return len(digits(config.data.image_size, "train" if split == "train" else "test")[0])
  return make_source(config, split).n


def check_available(config, split="train"):
  """Raises the data's one-line error (unknown data set, wrong channel count, TFDS data not prepared, TFRecords
  without the expected features) before anything is written; reads no batch."""
  if _check_dataset(config) != "DIGITS":
    make_source(config, _split_name(split))


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
  ds = train_stream(make_source(config, "train"), config, start_step, batch, local, process_index)
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
    images, labels = digits(config.data.image_size, "train" if split == "train" else "test")
    return eval_batches(images, labels, *args)
  return eval_stream(make_source(config, split), *args).as_numpy_iterator()
