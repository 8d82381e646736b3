"""The ImageNet Inception-v3 feature vector (TF-slim's `inception_v3`) in Flax: FID / KID at 256 px and above.

For data of 256 px and more the 2021 code (`run_lib.py`: `inceptionv3 = config.data.image_size >= 256`) took its
features from the TF-Hub module `https://tfhub.dev/google/imagenet/inception_v3/feature_vector/4` instead of the
FID Inception (`score_sde.inception`). That module is TF-slim's Inception-v3 with the ImageNet checkpoint
`inception_v3_2016_08_28/inception_v3.ckpt`, cut after the global average pool: 2048 features, no classifier, so
no Inception Score at those resolutions (2021 logged -1 for it). What this network is, as opposed to the FID one:

  * batch norm without a scale (beta, moving mean and variance only; epsilon 1e-3), convolutions without bias;
  * every branch pool of Mixed_5b..Mixed_7c is a 3x3 stride-1 SAME average over the pixels inside the image,
    Mixed_7c's included (the FID graph max-pools there);
  * no resize: the 2021 code fed uint8 / 255 at the images' own size (TF-GAN's `run_classifier_fn` only splits
    the batch, and the hub module takes any size), and the module maps [0, 1] to [-1, 1] itself;
  * the 2048 features are the mean of Mixed_7c over all positions (at 256 px Mixed_7c is 6x6 and slim's fixed
    8x8 window shrinks to it, so both pooling rules agree; larger inputs give a larger map, still averaged);
  * the smallest input the layers allow is 75x75 (Mixed_7c is then 1x1).

Input: uint8 images (0..255) or floats in [0, 1], NHWC, 1 or 3 channels (1 is repeated to 3). Output
{'pool_3': (B, 2048)}, the name the 2021 code stored these features under.

Weights: `load_variables(path)` reads the .npz that scripts/convert_inception_v3_weights.py writes from the TF-slim
checkpoint. Flax module names are the checkpoint's scope names (`Mixed_5c/Branch_1/Conv_1_0c_5x5`, odd ones
included), so the conversion is a renaming: `.../weights` -> params `.../conv/kernel` (both HWIO),
`.../BatchNorm/beta` -> params `.../BatchNorm/bias`, `moving_mean` / `moving_variance` -> batch_stats `mean` / `var`.
"""
import functools
from typing import Tuple

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from score_sde import inception

NAME = "imagenet_inception_v3"  # the tag of its features in statistics files (see evaluation.save_stats)
NUM_FEATURES = 2048
MIN_SIZE = 75  # below this the stride-2 reductions of Mixed_7a have nothing left to reduce
BN_EPS = 1e-3  # TF-slim's inception_arg_scope
PRECISION = inception.PRECISION
SCOPE = "InceptionV3"  # the checkpoint's top-level variable scope
CHECKPOINT_URL = "http://download.tensorflow.org/models/inception_v3_2016_08_28.tar.gz"
HOW_TO_GET = (f"download {CHECKPOINT_URL}, unpack it, convert inception_v3.ckpt with `python "
              "scripts/convert_inception_v3_weights.py --ckpt inception_v3.ckpt --out inception_v3_imagenet.npz` "
              "(needs TensorFlow) and pass --config.eval.inception_v3_path=inception_v3_imagenet.npz")


# ----------------------------------------------------------------------------------------------- layers
class ConvBN(nn.Module):
  """slim.conv2d in inception_arg_scope: conv (no bias) -> batch norm (beta only, stored statistics) -> ReLU."""
  features: int
  kernel: Tuple[int, int]
  strides: int = 1
  padding: str = "SAME"

  @nn.compact
  def __call__(self, x):
    s = self.strides
    x = nn.Conv(self.features, self.kernel, strides=(s, s), padding=self.padding, use_bias=False,
                precision=PRECISION, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, use_scale=False, epsilon=BN_EPS, name="BatchNorm")(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  """3x3 stride-1 SAME average pool that counts only the pixels inside the image (TF's AvgPool)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


def _conv(x, scope, features, kernel, strides=1, padding="SAME"):
  return ConvBN(features, kernel, strides, padding, name=scope)(x)


class Branch(nn.Module):
  """One `Branch_k` scope: [3x3 average pool], then convolutions in sequence, then optionally a split into
  two parallel convolutions whose outputs are concatenated (the 1x3 / 3x1 pairs of Mixed_7b/7c).

  Each layer is (scope, features, (kh, kw)[, strides, padding]).
  """
  layers: Tuple[tuple, ...]
  split: Tuple[tuple, ...] = ()
  pool: bool = False

  @nn.compact
  def __call__(self, x):
    if self.pool:
      x = _avg_pool_3x3(x)
    for layer in self.layers:
      x = _conv(x, *layer)
    if self.split:
      x = jnp.concatenate([_conv(x, *layer) for layer in self.split], axis=-1)
    return x


def _block(x, *branches):
  """Concatenates the branches; a branch is a `Branch` or "max" (the parameter-free 3x3 stride-2 max pool)."""
  outs = []
  for branch in branches:
    outs.append(_max_pool_3x3_s2(x) if branch == "max" else branch(x))
  return jnp.concatenate(outs, axis=-1)


class Mixed5(nn.Module):
  """35x35 blocks Mixed_5b/5c/5d. Mixed_5c's second branch is scoped Conv2d_0b_1x1 / Conv_1_0c_5x5 in slim."""
  pool_features: int
  branch_1_scopes: Tuple[str, str] = ("Conv2d_0a_1x1", "Conv2d_0b_5x5")

  @nn.compact
  def __call__(self, x):
    s1, s5 = self.branch_1_scopes
    return _block(
        x,
        Branch((("Conv2d_0a_1x1", 64, (1, 1)),), name="Branch_0"),
        Branch(((s1, 48, (1, 1)), (s5, 64, (5, 5))), name="Branch_1"),
        Branch((("Conv2d_0a_1x1", 64, (1, 1)), ("Conv2d_0b_3x3", 96, (3, 3)), ("Conv2d_0c_3x3", 96, (3, 3))),
               name="Branch_2"),
        Branch((("Conv2d_0b_1x1", self.pool_features, (1, 1)),), pool=True, name="Branch_3"))


class Mixed6a(nn.Module):
  """Grid reduction 35 -> 17 (both stride-2 3x3 convs are scoped `Conv2d_1a_1x1` in slim)."""

  @nn.compact
  def __call__(self, x):
    return _block(
        x,
        Branch((("Conv2d_1a_1x1", 384, (3, 3), 2, "VALID"),), name="Branch_0"),
        Branch((("Conv2d_0a_1x1", 64, (1, 1)), ("Conv2d_0b_3x3", 96, (3, 3)),
                ("Conv2d_1a_1x1", 96, (3, 3), 2, "VALID")), name="Branch_1"),
        "max")


class Mixed6(nn.Module):
  """17x17 blocks Mixed_6b..6e with factorised 7x7 convolutions."""
  channels: int

  @nn.compact
  def __call__(self, x):
    c = self.channels
    return _block(
        x,
        Branch((("Conv2d_0a_1x1", 192, (1, 1)),), name="Branch_0"),
        Branch((("Conv2d_0a_1x1", c, (1, 1)), ("Conv2d_0b_1x7", c, (1, 7)), ("Conv2d_0c_7x1", 192, (7, 1))),
               name="Branch_1"),
        Branch((("Conv2d_0a_1x1", c, (1, 1)), ("Conv2d_0b_7x1", c, (7, 1)), ("Conv2d_0c_1x7", c, (1, 7)),
                ("Conv2d_0d_7x1", c, (7, 1)), ("Conv2d_0e_1x7", 192, (1, 7))), name="Branch_2"),
        Branch((("Conv2d_0b_1x1", 192, (1, 1)),), pool=True, name="Branch_3"))


class Mixed7a(nn.Module):
  """Grid reduction 17 -> 8."""

  @nn.compact
  def __call__(self, x):
    return _block(
        x,
        Branch((("Conv2d_0a_1x1", 192, (1, 1)), ("Conv2d_1a_3x3", 320, (3, 3), 2, "VALID")), name="Branch_0"),
        Branch((("Conv2d_0a_1x1", 192, (1, 1)), ("Conv2d_0b_1x7", 192, (1, 7)), ("Conv2d_0c_7x1", 192, (7, 1)),
                ("Conv2d_1a_3x3", 192, (3, 3), 2, "VALID")), name="Branch_1"),
        "max")


class Mixed7(nn.Module):
  """8x8 blocks Mixed_7b/7c. Their Branch_1 3x1 conv is scoped Conv2d_0b_3x1 in 7b but Conv2d_0c_3x1 in 7c."""
  branch_1_3x1_scope: str

  @nn.compact
  def __call__(self, x):
    return _block(
        x,
        Branch((("Conv2d_0a_1x1", 320, (1, 1)),), name="Branch_0"),
        Branch((("Conv2d_0a_1x1", 384, (1, 1)),),
               split=(("Conv2d_0b_1x3", 384, (1, 3)), (self.branch_1_3x1_scope, 384, (3, 1))), name="Branch_1"),
        Branch((("Conv2d_0a_1x1", 448, (1, 1)), ("Conv2d_0b_3x3", 384, (3, 3))),
               split=(("Conv2d_0c_1x3", 384, (1, 3)), ("Conv2d_0d_3x1", 384, (3, 1))), name="Branch_2"),
        Branch((("Conv2d_0b_1x1", 192, (1, 1)),), pool=True, name="Branch_3"))


# ------------------------------------------------------------------------------------------------ input
def preprocess(images):
  """uint8 (0..255) or float ([0, 1]) NHWC, 1 or 3 channels, >= 75 px -> float32 in [-1, 1], not resized."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"Inception-v3 takes (B, H, W, 1 or 3) images; got shape {tuple(images.shape)}.")
  if min(images.shape[1:3]) < MIN_SIZE:
    raise ValueError(f"the ImageNet Inception-v3 needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels (it does "
                     f"not resize); got {images.shape[1]}x{images.shape[2]}.")
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  return (x - 0.5) * 2.0  # as TF-slim's inception preprocessing, which the hub module applies


# -------------------------------------------------------------------------------------------------- net
class InceptionV3(nn.Module):
  """TF-slim's Inception-v3 up to the global average pool: images -> {'pool_3': (B, 2048)}."""

  @nn.compact
  def __call__(self, images):
    x = preprocess(images)
    x = _conv(x, "Conv2d_1a_3x3", 32, (3, 3), 2, "VALID")  # 299 -> 149
    x = _conv(x, "Conv2d_2a_3x3", 32, (3, 3), 1, "VALID")  # 147
    x = _conv(x, "Conv2d_2b_3x3", 64, (3, 3))
    x = _max_pool_3x3_s2(x)  # MaxPool_3a_3x3: 73
    x = _conv(x, "Conv2d_3b_1x1", 80, (1, 1), 1, "VALID")
    x = _conv(x, "Conv2d_4a_3x3", 192, (3, 3), 1, "VALID")  # 71
    x = _max_pool_3x3_s2(x)  # MaxPool_5a_3x3: 35
    x = Mixed5(32, name="Mixed_5b")(x)
    x = Mixed5(64, ("Conv2d_0b_1x1", "Conv_1_0c_5x5"), name="Mixed_5c")(x)
    x = Mixed5(64, name="Mixed_5d")(x)
    x = Mixed6a(name="Mixed_6a")(x)  # 17
    for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = Mixed6(c, name=name)(x)
    x = Mixed7a(name="Mixed_7a")(x)  # 8
    x = Mixed7("Conv2d_0b_3x1", name="Mixed_7b")(x)
    x = Mixed7("Conv2d_0c_3x1", name="Mixed_7c")(x)
    return {"pool_3": jnp.mean(x, axis=(1, 2))}


@functools.lru_cache(maxsize=1)
def expected_shapes():
  """{variable path tuple: shape} of every variable of `InceptionV3` (traced, nothing computed)."""
  abstract = jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32))
  return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(abstract).items()}


# ------------------------------------------------------------------------------------ slim conversion
_SLIM_LEAF = {("params", "conv", "kernel"): "weights", ("params", "BatchNorm", "bias"): "BatchNorm/beta",
              ("batch_stats", "BatchNorm", "mean"): "BatchNorm/moving_mean",
              ("batch_stats", "BatchNorm", "var"): "BatchNorm/moving_variance"}
# Checkpoint scopes the feature vector does not use: the auxiliary and the 1001-way classifiers.
_UNUSED_SCOPES = (f"{SCOPE}/AuxLogits/", f"{SCOPE}/Logits/")


def slim_name(path):
  """Flax variable path -> the TF-slim checkpoint's variable name (both kernels are HWIO: no transpose)."""
  collection, *scopes, layer, leaf = path
  return f"{SCOPE}/{'/'.join(scopes)}/{_SLIM_LEAF[(collection, layer, leaf)]}"


def variables_from_slim(tensors):
  """TF-slim checkpoint tensors ({name: array}) -> Flax variables {'params', 'batch_stats'} (float32).

  Every variable of the network must be there with its exact shape, or a ValueError names it. Skipped, as the
  feature vector never reads them: tensors outside the `InceptionV3/` scope (global_step), the AuxLogits and
  Logits scopes, and slots stored under a used variable's name (`<variable>/<slot>`, e.g. moving averages).
  Any other tensor in the network's scopes (a batch-norm gamma, say) means a different network: an error.
  """
  flat, used = {}, set()
  for path, shape in expected_shapes().items():
    name = slim_name(path)
    if name not in tensors:
      raise ValueError(f"Inception-v3 checkpoint lacks {name!r} (shape {shape}): not TF-slim's inception_v3 "
                       "checkpoint.")
    value = np.asarray(tensors[name])
    if value.shape != shape:
      raise ValueError(f"Inception-v3 checkpoint tensor {name!r} has shape {value.shape}, expected {shape}.")
    if not np.issubdtype(value.dtype, np.floating) or not np.all(np.isfinite(value)):
      raise ValueError(f"Inception-v3 checkpoint tensor {name!r} is not finite floating point ({value.dtype}).")
    flat[path] = value.astype(np.float32)
    used.add(name)
  unknown = sorted(n for n in tensors if n.startswith(SCOPE + "/") and n not in used
                   and not n.startswith(_UNUSED_SCOPES) and not any(n.startswith(u + "/") for u in used))
  if unknown:
    raise ValueError(f"Inception-v3 checkpoint holds {len(unknown)} tensor(s) in the network's scopes that "
                     f"TF-slim's inception_v3 (batch norm without scale) does not have, e.g. {unknown[:3]}.")
  return traverse_util.unflatten_dict(flat)


# ------------------------------------------------------------------------------------------ npz files
save_variables = inception.save_variables


def load_variables(path):
  """Variables of `InceptionV3` from a converted .npz, every tensor present with its exact shape."""
  return inception.load_npz_variables(path, expected_shapes(), what="Inception-v3 weights",
                                      key="eval.inception_v3_path", how_to_get=HOW_TO_GET,
                                      foreign={".ckpt": "the TF-slim checkpoint",
                                               ".tgz": "the downloaded archive", ".gz": "the downloaded archive"})


def resolve_path(path):
  """`config.eval.inception_v3_path` -> a readable path; an http(s) URL is downloaded once into the cache."""
  return inception.resolve_path(path, key="eval.inception_v3_path", how_to_get=HOW_TO_GET,
                                default_name="inception_v3_imagenet.npz")


@jax.jit
def _apply(variables, images):
  # Module level, so every `get_inception_v3_fn` shares one compilation per input shape.
  return InceptionV3().apply(variables, images)


def get_inception_v3_fn(variables):
  """Compiled `fn(images) -> {'pool_3': (B, 2048)}` (float32) with `variables` bound (an argument, not constants)."""
  return lambda images: _apply(variables, images)
