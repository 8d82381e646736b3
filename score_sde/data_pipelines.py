"""The tf.data train and eval streams of a streamed source (`score_sde.data_sources`).

Windowed stateless shuffles, per-process ownership of stream positions, and flips / dequantisation keyed by
(seed, stream position), as the stream contract in `score_sde.datasets` describes. `src.tf` is the
TensorFlow module the source imported, so importing this module imports no TF.
"""
from score_sde.data_keys import EVAL_AUGMENT, FOREVER, TRAIN_AUGMENT, TRAIN_ORDER, nonneg


def _key(tf, seed, stream):
  return tf.constant([nonneg(seed), stream], tf.int64)


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


def train_stream(src, config, start_step, batch, local, process_index):
  """The training stream of a streamed source as a tf.data pipeline (see `score_sde.datasets`)."""
  tf = src.tf
  n, window = src.n, src.window
  pos0 = start_step * batch
  epoch0, offset = divmod(pos0, n)
  window0 = offset // window
  order_key = _key(tf, config.seed, TRAIN_ORDER)
  augment_key = _key(tf, config.seed, TRAIN_AUGMENT)

  def epoch(e, raw, first_window):
    epoch_key = _fold(tf, order_key, e)
    windows = raw.batch(window).enumerate(start=first_window)
    return windows.map(lambda w, ex: _permute_window(tf, ex, _fold(tf, epoch_key, w))).unbatch()

  first = epoch(epoch0, src.read(window0 * window), window0).skip(offset - window0 * window)
  whole = src.read(0)  # built once here, not inside flat_map's traced function
  rest = tf.data.Dataset.range(epoch0 + 1, FOREVER).flat_map(lambda e: epoch(e, whole, 0))
  ds = first.concatenate(rest).enumerate(start=pos0).filter(_own(tf, batch, local, process_index))
  flip, dequantize = config.data.random_flip, config.data.uniform_dequantization
  ds = ds.map(lambda pos, raw: _tf_augment(tf, src.decode(raw), _fold(tf, augment_key, pos), flip, dequantize),
              num_parallel_calls=tf.data.AUTOTUNE)
  return _finish(tf, ds.batch(local, drop_remainder=True))


def eval_stream(src, config, batch, local, process_index, repeat, dequantize, start_batch, pass_index):
  """The eval stream of a streamed source; see `score_sde.datasets.eval_iterator`."""
  tf = src.tf
  n = src.n
  pos0 = start_batch * batch
  pass0, offset = divmod(pos0, n)
  eval_key = _key(tf, config.seed, EVAL_AUGMENT)
  if repeat:
    whole = src.read(0)
    ds = src.read(offset).concatenate(tf.data.Dataset.range(pass0 + 1, FOREVER).flat_map(lambda _: whole))
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
