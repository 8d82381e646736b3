"""The embedded digits: scikit-learn's 1,797 8x8 digits as an in-memory source, with numpy train / eval streams.

A fixed 1,500 / 297 train / test split, resized to image_size (1 channel) on the 8-bit grid. The streams
follow the contract in `score_sde.datasets`; the shuffle window is the whole set (a full shuffle per epoch).
"""
import functools

import numpy as np

from score_sde.data_keys import EVAL_AUGMENT, FOREVER, TRAIN_AUGMENT, TRAIN_ORDER, nonneg

DIGITS_NUM_TRAIN = 1500
_DIGITS_SPLIT_SEED = 20210101  # fixed: the split must not move when config.seed does


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
def digits(image_size, split):
  """(images (n, S, S, 1) float32 in [0, 1], labels (n,) int32) for one split ('train' / 'test')."""
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


def _augment(images, positions, keys, flip, dequantize):
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


def train_batches(images, labels, config, start_step, batch, local, process_index):
  """Training batches of an in-memory set: epoch e is a full permutation keyed by (seed, e)."""
  n, seed = len(images), nonneg(config.seed)
  perms = {}
  step = start_step
  while True:
    pos = step * batch + process_index * local + np.arange(local)
    epochs, within = np.divmod(pos, n)
    for e in set(epochs.tolist()) - set(perms):
      perms[e] = np.random.default_rng([seed, TRAIN_ORDER, e]).permutation(n)
    for e in [e for e in perms if e < epochs.min()]:
      del perms[e]  # only the current (and, at a boundary, the next) epoch is ever needed
    idx = np.array([perms[e][j] for e, j in zip(epochs.tolist(), within.tolist())])
    image = _augment(images[idx], pos, (seed, TRAIN_AUGMENT), config.data.random_flip,
                     config.data.uniform_dequantization)
    yield {"image": image, "label": labels[idx]}
    step += 1


def eval_batches(images, labels, config, batch, local, process_index, repeat, dequantize, start_batch,
                 pass_index):
  """Eval batches of an in-memory set in stored order; see `score_sde.datasets.eval_iterator`."""
  n, seed = len(images), nonneg(config.seed)
  stop = FOREVER if repeat else -(-n // batch) * batch
  for start in range(start_batch * batch, stop, batch):
    pos = start + process_index * local + np.arange(local)
    passes, within = np.divmod(pos, n)
    real = np.ones(local, bool) if repeat else pos < n
    idx = np.where(real, within, 0)
    image = np.array(images[idx], dtype=np.float32)
    if dequantize:
      for i in np.flatnonzero(real):
        rng = np.random.default_rng([seed, EVAL_AUGMENT, pass_index + int(passes[i]), int(within[i])])
        image[i] = (rng.random(image.shape[1:], dtype=np.float32) + 255.0 * image[i]) / 256.0
    image[~real] = 0.0
    yield {"image": image, "label": np.where(real, labels[idx], 0).astype(np.int32),
           "mask": real.astype(np.float32)}
