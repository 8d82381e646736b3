"""The FID Inception-v3 (the TF "2015-12-05" graph) in Flax, for FID / KID (pool_3) and IS (logits).

This is the network of Heusel et al. 2017 and Salimans et al. 2016 as ported to PyTorch by pytorch-fid, whose
weight file `pt_inception-2015-12-05-6726825d.pth` we convert (scripts/convert_inception_weights.py). It
differs from the textbook Inception-v3 in ways that move FID, so each one is kept:
  * the pool branches of the A, C and first E blocks average over real pixels only (padding excluded);
  * the last E block (Mixed_7c) max-pools in its pool branch;
  * batch norm with eps 1e-3 and stored statistics (inference only);
  * a 1008-way classifier (ImageNet's 1000 classes plus 8 unused ones of the 2015 graph).

Input. uint8 images (0..255) or floats in [0, 1], NHWC, 1 or 3 channels (1 is repeated to 3). They are
resized to 299x299 by bilinear interpolation with half-pixel centres and no antialiasing (PyTorch's
`interpolate(mode='bilinear', align_corners=False)`, i.e. `jax.image.resize(..., antialias=False)`), as
pytorch-fid does, then mapped to [-1, 1] by 2x - 1. The TF graph's own ResizeBilinear put pixel centres at
the corners (no half-pixel offset); that shifts FIDs by a small amount, as the pytorch-fid notes say, so
numbers are comparable with pytorch-fid rather than bit-equal to the TF code.

Outputs. 'pool_3': the 2048 global-average-pooled features; 'logits': all 1008 logits. Inception Score
uses all 1008 (TF-GAN's `classifier_score_from_logits`, which the 2021 code called, takes the softmax over
the graph's full logits; the 8 extra classes get negligible mass on real images).

Weights. `load_variables(path)` reads the converted .npz: keys are the Flax variable paths joined by '/'
("params/Mixed_5b/branch1x1/conv/kernel", "batch_stats/Mixed_5b/branch1x1/bn/mean", ...). Flax module
names are pytorch-fid's state_dict names, so the conversion is a fixed renaming plus transposes.

This network scores data below 256 px; from 256 px on the 2021 code used the ImageNet Inception-v3 feature
vector instead (`score_sde.inception_v3`; `evaluation.feature_network` picks).
"""
import functools
import os
import urllib.error
import urllib.request
from typing import Tuple

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from score_sde import files

NAME = "fid_inception"  # the tag of its features in statistics files (see evaluation.save_stats)
INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_LOGITS = 1008
# Full float32 products even where the default would be TF32 / bf16 passes (GPUs, TPUs): FID compares
# features to reference statistics, and a 1e-3 drift in features is not worth the saved time.
PRECISION = jax.lax.Precision.HIGHEST
BN_EPS = 1e-3  # the 2015 graph's batch-norm epsilon (PyTorch's default 1e-5 would shift every layer)
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
HOW_TO_GET = (f"download {WEIGHTS_URL}, convert it with `python scripts/convert_inception_weights.py "
              "--pth pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz` (needs torch) and pass "
              "--config.eval.inception_path=inception_fid.npz")


# ----------------------------------------------------------------------------------------------- layers
class BasicConv(nn.Module):
  """conv (no bias) -> batch norm (stored statistics) -> ReLU, PyTorch padding (symmetric, explicit)."""
  features: int
  kernel: Tuple[int, int]
  strides: int = 1
  padding: Tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    (ph, pw), s = self.padding, self.strides
    x = nn.Conv(self.features, self.kernel, strides=(s, s), padding=((ph, ph), (pw, pw)), use_bias=False,
                precision=PRECISION, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu(x)


def _conv(x, features, kernel, name, strides=1, padding=(0, 0)):
  kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
  padding = (padding, padding) if isinstance(padding, int) else padding
  return BasicConv(features, kernel, strides, padding, name=name)(x)


def _avg_pool_3x3(x):
  """3x3 stride-1 average over the pixels inside the image (the 2015 graph's 'SAME' average pooling)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, strides):
  padding = ((1, 1), (1, 1)) if strides == 1 else "VALID"
  return nn.max_pool(x, (3, 3), strides=(strides, strides), padding=padding)


class InceptionA(nn.Module):
  """35x35 block: 1x1, 5x5, double 3x3 and pool branches (Mixed_5b/c/d)."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = _conv(x, 64, 1, "branch1x1")
    b5 = _conv(_conv(x, 48, 1, "branch5x5_1"), 64, 5, "branch5x5_2", padding=2)
    b3 = _conv(x, 64, 1, "branch3x3dbl_1")
    b3 = _conv(_conv(b3, 96, 3, "branch3x3dbl_2", padding=1), 96, 3, "branch3x3dbl_3", padding=1)
    bp = _conv(_avg_pool_3x3(x), self.pool_features, 1, "branch_pool")
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35 -> 17 (Mixed_6a)."""

  @nn.compact
  def __call__(self, x):
    b3 = _conv(x, 384, 3, "branch3x3", strides=2)
    bd = _conv(_conv(x, 64, 1, "branch3x3dbl_1"), 96, 3, "branch3x3dbl_2", padding=1)
    bd = _conv(bd, 96, 3, "branch3x3dbl_3", strides=2)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convolutions (Mixed_6b..e)."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    b1 = _conv(x, 192, 1, "branch1x1")
    b7 = _conv(x, c, 1, "branch7x7_1")
    b7 = _conv(b7, c, (1, 7), "branch7x7_2", padding=(0, 3))
    b7 = _conv(b7, 192, (7, 1), "branch7x7_3", padding=(3, 0))
    bd = _conv(x, c, 1, "branch7x7dbl_1")
    bd = _conv(bd, c, (7, 1), "branch7x7dbl_2", padding=(3, 0))
    bd = _conv(bd, c, (1, 7), "branch7x7dbl_3", padding=(0, 3))
    bd = _conv(bd, c, (7, 1), "branch7x7dbl_4", padding=(3, 0))
    bd = _conv(bd, 192, (1, 7), "branch7x7dbl_5", padding=(0, 3))
    bp = _conv(_avg_pool_3x3(x), 192, 1, "branch_pool")
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17 -> 8 (Mixed_7a)."""

  @nn.compact
  def __call__(self, x):
    b3 = _conv(_conv(x, 192, 1, "branch3x3_1"), 320, 3, "branch3x3_2", strides=2)
    b7 = _conv(x, 192, 1, "branch7x7x3_1")
    b7 = _conv(b7, 192, (1, 7), "branch7x7x3_2", padding=(0, 3))
    b7 = _conv(b7, 192, (7, 1), "branch7x7x3_3", padding=(3, 0))
    b7 = _conv(b7, 192, 3, "branch7x7x3_4", strides=2)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with split 1x3 / 3x1 outputs (Mixed_7b: average pool branch; Mixed_7c: max pool branch)."""
  pool: str

  @nn.compact
  def __call__(self, x):
    b1 = _conv(x, 320, 1, "branch1x1")
    b3 = _conv(x, 384, 1, "branch3x3_1")
    b3 = jnp.concatenate([_conv(b3, 384, (1, 3), "branch3x3_2a", padding=(0, 1)),
                          _conv(b3, 384, (3, 1), "branch3x3_2b", padding=(1, 0))], axis=-1)
    bd = _conv(_conv(x, 448, 1, "branch3x3dbl_1"), 384, 3, "branch3x3dbl_2", padding=1)
    bd = jnp.concatenate([_conv(bd, 384, (1, 3), "branch3x3dbl_3a", padding=(0, 1)),
                          _conv(bd, 384, (3, 1), "branch3x3dbl_3b", padding=(1, 0))], axis=-1)
    pooled = _max_pool_3x3(x, 1) if self.pool == "max" else _avg_pool_3x3(x)
    bp = _conv(pooled, 192, 1, "branch_pool")
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


# ------------------------------------------------------------------------------------------------ input
def preprocess(images):
  """uint8 (0..255) or float ([0, 1]) NHWC, 1 or 3 channels -> float32 (B, 299, 299, 3) in [-1, 1].

  Resizes before scaling, as pytorch-fid does (bilinear weights sum to one, so the order is immaterial).
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"Inception takes (B, H, W, 1 or 3) images; got shape {tuple(images.shape)}.")
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), method="bilinear", antialias=False)
  return 2.0 * x - 1.0


# -------------------------------------------------------------------------------------------------- net
class InceptionV3(nn.Module):
  """The FID Inception-v3: images -> {'pool_3': (B, 2048), 'logits': (B, 1008)}."""

  @nn.compact
  def __call__(self, images):
    x = preprocess(images)
    x = _conv(x, 32, 3, "Conv2d_1a_3x3", strides=2)  # 149
    x = _conv(x, 32, 3, "Conv2d_2a_3x3")  # 147
    x = _conv(x, 64, 3, "Conv2d_2b_3x3", padding=1)
    x = _max_pool_3x3(x, 2)  # 73
    x = _conv(x, 80, 1, "Conv2d_3b_1x1")
    x = _conv(x, 192, 3, "Conv2d_4a_3x3")  # 71
    x = _max_pool_3x3(x, 2)  # 35
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)  # 17
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)  # 8
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    pool_3 = jnp.mean(x, axis=(1, 2))
    return {"pool_3": pool_3, "logits": nn.Dense(NUM_LOGITS, precision=PRECISION, name="fc")(pool_3)}


@functools.lru_cache(maxsize=1)
def expected_shapes():
  """{variable path tuple: shape} of every variable of `InceptionV3` (traced, nothing computed)."""
  abstract = jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(abstract).items()}


# ----------------------------------------------------------------------------------- torch conversion
def _torch_name(path):
  """Flax variable path -> (pytorch-fid state_dict name, transpose that maps the torch tensor to ours)."""
  collection, *modules, leaf = path
  if modules == ["fc"]:
    return {"kernel": ("fc.weight", (1, 0)), "bias": ("fc.bias", None)}[leaf]
  base = ".".join(modules)
  names = {("params", "kernel"): ("weight", (2, 3, 1, 0)),  # OIHW -> HWIO
           ("params", "scale"): ("weight", None), ("params", "bias"): ("bias", None),
           ("batch_stats", "mean"): ("running_mean", None), ("batch_stats", "var"): ("running_var", None)}
  suffix, perm = names[(collection, leaf)]
  return f"{base}.{suffix}", perm


def variables_from_state_dict(state_dict):
  """pytorch-fid state_dict ({name: numpy array}) -> Flax variables {'params', 'batch_stats'} (float32).

  Total: every network tensor must be used with exactly the expected shape, or a ValueError names it.
  Only the batch-norm `num_batches_tracked` counters, which inference never reads, are skipped.
  """
  unused = {k for k in state_dict if not k.endswith(".num_batches_tracked")}
  flat = {}
  for path, shape in expected_shapes().items():
    name, perm = _torch_name(path)
    if name not in state_dict:
      raise ValueError(f"Inception weights lack tensor {name!r} (shape {_torch_shape(shape, perm)}): "
                       f"not a pytorch-fid FID Inception state_dict.")
    value = np.asarray(state_dict[name], np.float32)
    value = value.transpose(perm) if perm is not None and value.ndim == len(perm) else value
    if value.shape != shape:
      raise ValueError(f"Inception tensor {name!r} has shape {tuple(np.shape(state_dict[name]))}, expected "
                       f"{_torch_shape(shape, perm)}.")
    flat[path] = value
    unused.discard(name)
  if unused:
    raise ValueError(f"Inception weights hold {len(unused)} tensor(s) the FID network does not use, e.g. "
                     f"{sorted(unused)[:3]}: not a pytorch-fid FID Inception state_dict.")
  return traverse_util.unflatten_dict(flat)


def _torch_shape(shape, perm):
  if perm is None:
    return tuple(shape)
  inverse = np.argsort(perm)
  return tuple(shape[i] for i in inverse)


# ------------------------------------------------------------------------------------------ npz files
def save_variables(path, variables):
  """Writes variables as an .npz of '/'-joined variable paths (atomically: a temp file, then a rename)."""
  path = epath.Path(path)
  flat = {"/".join(k): np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(variables).items()}
  files.save_npz(path, flat)


def load_variables(path):
  """Variables of `InceptionV3` from a converted .npz, every tensor present with its exact shape."""
  return load_npz_variables(path, expected_shapes(), what="Inception weights", key="eval.inception_path",
                            how_to_get=HOW_TO_GET, foreign={".pth": "the PyTorch file"})


def load_npz_variables(path, expected, *, what, key, how_to_get, foreign=None):
  """Flax variables from an .npz of '/'-joined variable paths (as `save_variables` writes), checked against
  `expected` ({path tuple: shape}): every tensor present with its exact shape, nothing else. Each failure is
  a one-line ValueError naming `what` and ending in `how_to_get`; `foreign` ({suffix: description}) names the
  unconverted source files that are passed by mistake (`key` is the config key that points at the file).
  """
  path = epath.Path(path)
  if not path.exists():
    raise ValueError(f"{what} {os.fspath(path)!r} do not exist: {how_to_get}.")
  if path.suffix in (foreign or {}):
    raise ValueError(f"{key}={os.fspath(path)!r} is {foreign[path.suffix]}: {how_to_get}.")
  try:
    with path.open("rb") as f, np.load(f) as data:
      stored = {tuple(k.split("/")): data[k] for k in data.files}
  except Exception as err:  # pylint: disable=broad-except  (zip, pickle and OS errors all mean "unreadable")
    raise ValueError(f"{what} {os.fspath(path)!r} are unreadable ({type(err).__name__}: {err}); "
                     f"re-create them: {how_to_get}.") from None
  for k, shape in expected.items():
    if k not in stored:
      raise ValueError(f"{what} {os.fspath(path)!r} lack {'/'.join(k)}: re-create them: {how_to_get}.")
    if stored[k].shape != shape:
      raise ValueError(f"{what} {os.fspath(path)!r}: {'/'.join(k)} has shape {stored[k].shape}, expected "
                       f"{shape}.")
  extra = sorted("/".join(k) for k in set(stored) - set(expected))
  if extra:
    raise ValueError(f"{what} {os.fspath(path)!r} hold unknown tensors, e.g. {extra[:3]}: is {key} the right "
                     f"file?")
  return jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), traverse_util.unflatten_dict(stored))


def resolve_path(inception_path, *, key="eval.inception_path", how_to_get=HOW_TO_GET,
                 default_name="inception_fid.npz"):
  """`config.eval.inception_path` (or another weights key) -> a readable path; an http(s) URL is downloaded
  once into `files.cache_dir()`."""
  if not inception_path:
    raise ValueError(f"{key} is not set: {how_to_get}.")
  if not inception_path.startswith(("http://", "https://")):
    return inception_path
  local = os.path.join(files.cache_dir(), os.path.basename(inception_path.split("?")[0]) or default_name)
  if not os.path.exists(local):
    os.makedirs(os.path.dirname(local), exist_ok=True)
    try:
      urllib.request.urlretrieve(inception_path, local + ".tmp")
    except (urllib.error.URLError, OSError, ValueError) as err:
      raise ValueError(f"could not download {key}={inception_path!r} ({err}); copy the converted "
                       f".npz here by hand and pass its local path.") from None
    os.replace(local + ".tmp", local)
  return local


@jax.jit
def _apply(variables, images):
  # Module level, so every `get_inception_fn` shares one compilation per input shape.
  return InceptionV3().apply(variables, images)


def get_inception_fn(variables):
  """Compiled `fn(images) -> {'pool_3': (B, 2048), 'logits': (B, 1008)}` (float32) with `variables` bound.

  The variables are an argument of the compiled function rather than constants folded into it, which keeps
  compilation fast; one compilation per input shape and dtype.
  """
  return lambda images: _apply(variables, images)
