"""A small CNN classifier of the embedded digits: their feature network for FID / KID / IS.

Inception's ImageNet features say little about 16x16 grey digits, so digits runs are scored with this
network instead: its 128 penultimate ReLU features stand in for pool_3 and its 10 logits for Inception's.
Numbers are comparable between digits runs only, never with Inception FIDs.

It is trained by `train` on the digits train split (`datasets.eval_iterator`, quantised to uint8 as samples
are) with a fixed seed, so every machine gets the same network up to floating-point round-off, at the
config's image size: 30 epochs of 11 AdamW steps (batch 128), ~97.6% accuracy on the held-out test split
at 16x16. `get_classifier` trains it on first use and caches it in `classifier_path(config)`:
config.eval.classifier_path when set, else `<cache_dir>/digits_classifier_<size>px.npz` (cache_dir as in
`files.cache_dir`: $SCORE_SDE_CACHE, else ~/.cache/score_sde). `evaluate_accuracy(config)` reports its
accuracy on the held-out 297 digits.
"""
import os
import time

from absl import logging
from etils import epath
import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_sde import datasets, files, inception, settings

NUM_FEATURES = 128
NUM_CLASSES = 10
SEED = 0  # fixed, not config.seed: the yardstick must not move with the run it measures
EPOCHS = 30
BATCH = 128
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-4
FORMAT_VERSION = 1


class DigitsCNN(nn.Module):
  """[0, 1] images (B, S, S, 1) -> {'pool_3': (B, 128) ReLU features, 'logits': (B, 10)}."""

  @nn.compact
  def __call__(self, images):
    x = 2.0 * images - 1.0
    # Strided convolutions rather than conv + pooling: a quarter of the work, the same accuracy here.
    hi = inception.PRECISION  # float32 products on every backend, as for Inception
    x = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2), precision=hi, name="conv1")(x))
    x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2), precision=hi, name="conv2")(x))
    features = nn.relu(nn.Dense(NUM_FEATURES, precision=hi, name="features")(x.reshape(x.shape[0], -1)))
    return {"pool_3": features, "logits": nn.Dense(NUM_CLASSES, precision=hi, name="logits")(features)}


def _check(config):
  if config.data.dataset != "DIGITS":
    raise ValueError(f"the digits classifier scores DIGITS only; data.dataset={config.data.dataset!r}.")
  if config.data.image_size < 4:
    raise ValueError(f"data.image_size={config.data.image_size} is too small for the digits classifier (>= 4).")


def _split(config, split):
  """(uint8 images (n, S, S, 1), int32 labels (n,)): a whole split, in stored order, no dequantisation."""
  n = datasets.num_examples(config, split)
  batch = next(iter(datasets.eval_iterator(config, split, batch_size=n, dequantize=False)))
  images = np.clip(np.round(batch["image"] * 255.0), 0, 255).astype(np.uint8)
  return images, batch["label"].astype(np.int32)


def _to_float(images_uint8):
  return jnp.asarray(images_uint8, jnp.float32) / 255.0


def _loss(params, model, x, y):
  logits = model.apply({"params": params}, x)["logits"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _train_params(images, labels, image_size):
  """AdamW, cosine-decayed, over EPOCHS epochs of a permutation keyed by SEED; one compiled step per batch.

  The steps are called from Python on host-gathered batches: XLA:CPU runs convolutions inside a while loop
  (lax.scan) or on dynamically sliced batches far more slowly (see `train.py`), and the dispatch overhead of
  a few hundred small steps is negligible.
  """
  model = DigitsCNN()
  x, y = np.asarray(images, np.float32) / 255.0, np.asarray(labels)
  steps_per_epoch = len(x) // BATCH
  tx = optax.adamw(optax.cosine_decay_schedule(LEARNING_RATE, EPOCHS * steps_per_epoch),
                   weight_decay=WEIGHT_DECAY)
  params = model.init(jax.random.PRNGKey(SEED), jnp.zeros((1, image_size, image_size, 1)))["params"]

  @jax.jit
  def step(params, opt_state, xb, yb):
    grads = jax.grad(_loss)(params, model, xb, yb)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  order = np.random.default_rng(SEED)
  for _ in range(EPOCHS):
    perm = order.permutation(len(x))[:steps_per_epoch * BATCH].reshape(steps_per_epoch, BATCH)
    for idx in perm:
      params, opt_state = step(params, opt_state, x[idx], y[idx])
  return params


@jax.jit
def _apply(params, images):
  return DigitsCNN().apply({"params": params}, _to_float(images))


def get_classifier_fn(params):
  """Compiled `fn(uint8 images (B, S, S, 1)) -> {'pool_3': (B, 128), 'logits': (B, 10)}`."""
  return lambda images: _apply(params, images)


def _accuracy(params, images, labels):
  logits = get_classifier_fn(params)(jnp.asarray(images))["logits"]
  return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


def train(config):
  """Trains the classifier at config's image size: (params, {'test_accuracy', 'train_seconds'})."""
  _check(config)
  start = time.perf_counter()
  params = jax.block_until_ready(_train_params(*_split(config, "train"), config.data.image_size))
  seconds = time.perf_counter() - start
  accuracy = _accuracy(params, *_split(config, "test"))
  logging.info("digits classifier (%dpx): test accuracy %.4f, trained in %.1f s", config.data.image_size,
               accuracy, seconds)
  return params, {"test_accuracy": accuracy, "train_seconds": seconds}


def classifier_path(config):
  return settings.EvalSettings.from_config(config).classifier_path or os.path.join(
      files.cache_dir(), f"digits_classifier_{config.data.image_size}px.npz")


def _expected_shapes(image_size):
  abstract = jax.eval_shape(DigitsCNN().init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, image_size, image_size, 1), jnp.float32))["params"]
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract, sep="/").items()}


def save(path, params, image_size, info):
  """Writes params and metadata as an .npz, atomically (a temp file, then a rename)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {f"params/{k}": np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  meta = {"meta/version": FORMAT_VERSION, "meta/image_size": image_size,
          "meta/test_accuracy": info["test_accuracy"], "meta/train_seconds": info["train_seconds"]}
  files.save_npz(path, arrays | meta)


def load(path, image_size):
  """(params, info) from a cache file written by `save` at `image_size`; a one-line ValueError otherwise."""
  path = epath.Path(path)
  fix = f"delete {os.fspath(path)!r} to retrain it"
  try:
    with path.open("rb") as f, np.load(f) as data:
      stored = {k: np.asarray(data[k]) for k in data.files}
  except Exception as err:  # pylint: disable=broad-except  (zip, pickle and OS errors all mean "unusable")
    raise ValueError(f"digits classifier cache is unreadable ({type(err).__name__}: {err}): {fix}.") from None
  if stored.get("meta/version") != FORMAT_VERSION or stored.get("meta/image_size") != image_size:
    raise ValueError(f"digits classifier cache is not a version-{FORMAT_VERSION} classifier for {image_size}px "
                     f"images: {fix}.")
  params = {k[len("params/"):]: v for k, v in stored.items() if k.startswith("params/")}
  shapes = {k: tuple(v.shape) for k, v in params.items()}
  if shapes != _expected_shapes(image_size):
    raise ValueError(f"digits classifier cache has the wrong parameters: {fix}.")
  info = {"test_accuracy": float(stored["meta/test_accuracy"]), "train_seconds": float(stored["meta/train_seconds"])}
  params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in params.items()}, sep="/")
  return params, info


def get_classifier(config):
  """The classifier's params: loaded from `classifier_path(config)`, trained and saved there if absent."""
  _check(config)
  path = classifier_path(config)
  if epath.Path(path).exists():
    return load(path, config.data.image_size)[0]
  params, info = train(config)
  save(path, params, config.data.image_size, info)
  return params


def evaluate_accuracy(config, split="test"):
  """Accuracy of the (cached or newly trained) classifier on a digits split (default the held-out test part)."""
  return _accuracy(get_classifier(config), *_split(config, split))
