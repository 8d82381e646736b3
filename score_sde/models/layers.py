"""Building blocks shared by every network: initialisers, 1x1/3x3 convs, NIN, activations, time embedding.

Convs created by these helpers are plain `nn.Conv` modules made inside the caller's compact method, so
they take the caller's automatic names (`Conv_0`, `Conv_1`, ...) exactly as the 2021 checkpoints expect.
"""
import contextlib
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from score_sde.models import onednn_conv


def default_init(scale=1.0):
  """DDPM initialisation: variance scaling, fan_avg, uniform (a scale of 0 means 1e-10).

  The fans follow the HWIO kernel layout (fan_in = kh*kw*C_in), as TensorFlow's DDPM code and the
  PyTorch port compute them. (The 2021 JAX code computed fans in PyTorch's axis order on HWIO kernels,
  which shrank conv initialisations; we follow the DDPM paper's code.)
  """
  scale = 1e-10 if scale == 0 else scale
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


# ----------------------------------------------------------------------------------------------------------
# How `nn.Conv` modules made by the helpers below compute. Inside `conv_impl("onednn")` (the CPU train step,
# see `losses.get_train_step`) every NHWC conv, 1x1 included, goes to oneDNN's kernels (`onednn_conv.py`;
# 1x1 convs there rather than as a matmul: small DDPM++ train step -8 ms of ~91 ms on a 2-core AVX-512 CPU).
# Otherwise 1x1 convs are per-pixel matmuls: as `jnp.dot` on (N*H*W, C) their backward pass is two plain
# matmuls, where XLA:CPU otherwise lowers the kernel gradient as a window-HxW convolution on transposed
# copies of the activations (about -5 ms of ~145 ms), and other convs go to `lax.conv_general_dilated`.
# Parameters (`Conv_k/kernel` HWIO, `Conv_k/bias`) are the same every way; set `CONV_IMPL = "lax"` (or env
# SCORE_SDE_CONV_IMPL=lax) to send 1x1 convs to lax as well outside the oneDNN scope.
CONV_IMPL = os.environ.get("SCORE_SDE_CONV_IMPL", "dot1x1")
_ACTIVE_IMPL = ["xla"]  # set by `conv_impl` while a function is traced


@contextlib.contextmanager
def conv_impl(name):
  """Convs traced within the block use `name`: 'xla' or 'onednn' (reverse-mode autodiff only). Trace a
  fresh function inside it: `jax.jit` reuses an earlier trace of the same function whatever the block."""
  if name not in ("xla", "onednn"):
    raise ValueError(f"conv implementation {name!r} is not one of ['xla', 'onednn'].")
  _ACTIVE_IMPL.append(name)
  try:
    yield
  finally:
    _ACTIVE_IMPL.pop()


def native_kernels_active():
  """True while a function is traced inside `conv_impl("onednn")`: convs and GroupNorm(+SiLU) go native."""
  return _ACTIVE_IMPL[-1] == "onednn"


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` as `nn.Conv` calls it: in oneDNN within `conv_impl("onednn")`, else with
  1x1 stride-1 NHWC convs done as a matmul."""
  plain = (lhs.ndim == 4 and feature_group_count == 1
           and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and tuple(dimension_numbers) == tuple(lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                                                             ("NHWC", "HWIO", "NHWC"))))
  if native_kernels_active() and plain and lhs.dtype == rhs.dtype == jnp.float32:
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    return onednn_conv.conv2d(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))
  is_1x1 = (CONV_IMPL == "dot1x1" and plain and tuple(rhs.shape[:2]) == (1, 1)
            and tuple(window_strides) == (1, 1)
            and (padding in ("SAME", "VALID") or all(tuple(p) == (0, 0) for p in padding)))
  if is_1x1:
    c, o = rhs.shape[2:]
    return jnp.dot(lhs.reshape(-1, c), rhs.reshape(c, o), precision=precision).reshape(lhs.shape[:-1] + (o,))
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count, precision=precision)


def ddpm_conv1x1(x, out_planes, stride=1, bias=True, dilation=1, init_scale=1.0):
  """1x1 conv with the DDPM initialisation."""
  return nn.Conv(out_planes, kernel_size=(1, 1), strides=(stride, stride), padding="SAME",
                 use_bias=bias, kernel_dilation=(dilation, dilation),
                 kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                 conv_general_dilated=conv_general_dilated)(x)


def ddpm_conv3x3(x, out_planes, stride=1, bias=True, dilation=1, init_scale=1.0):
  """3x3 conv with the DDPM initialisation; 'SAME' padding (with stride 2: pad right/bottom, as TF)."""
  return nn.Conv(out_planes, kernel_size=(3, 3), strides=(stride, stride), padding="SAME",
                 use_bias=bias, kernel_dilation=(dilation, dilation),
                 kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                 conv_general_dilated=conv_general_dilated)(x)


class Conv(nn.Module):
  """A stride-1 'SAME' NHWC conv that returns its bias instead of adding it: `(conv(x, kernel), bias)`, for
  a consumer that adds the bias in a pass of its own (`layerspp.conv_temb_norm`). Parameters are `nn.Conv`'s
  (`kernel` HWIO, `bias`) with the same initialisers, and the class name makes Flax number it `Conv_k` in the
  same sequence as `nn.Conv`."""
  features: int
  kernel_size: tuple = (3, 3)
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", default_init(self.init_scale), (*self.kernel_size, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    dimension_numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
    y = conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=dimension_numbers)
    return y, bias


# NIN as `jnp.dot` on (N*H*W, C) rather than `einsum("...c,cd->...d")`: same math and parameters; on
# XLA:CPU it measured ~2-4% faster on the small DDPM++ train step (attention q/k/v/out projections).
NIN_MATMUL = True


class NIN(nn.Module):
  """Network-in-network: a per-pixel linear map with parameters `W` (in, out) and `b`."""
  num_units: int
  init_scale: float = 0.1

  @nn.compact
  def __call__(self, x):
    w = self.param("W", default_init(self.init_scale), (x.shape[-1], self.num_units))
    b = self.param("b", nn.initializers.zeros, (self.num_units,))
    if NIN_MATMUL:
      return jnp.dot(x.reshape(-1, x.shape[-1]), w).reshape(x.shape[:-1] + (self.num_units,)) + b
    return jnp.einsum("...c,cd->...d", x, w) + b


# ----------------------------------------------------------------------------------------------------------
# Dropout with the same masks as `nn.Dropout`, computed faster on CPU.
#
# `nn.Dropout` draws `jax.random.bernoulli(make_rng('dropout'), 1 - rate, shape)`. With the default
# (partitionable) threefry PRNG that is, per element i: (a, b) = threefry2x32(key, (hi(i), lo(i))), bits = a ^ b,
# keep = uniform(bits) < 1 - rate. On CPU, JAX lowers threefry2x32 as a rolled 5-iteration while loop that
# writes every intermediate to memory (1-2.7 ms for one 32x16x16x64 mask on the 2-core dev VM). `Dropout`
# below evaluates the same hash unrolled in plain jnp ops (as JAX's non-CPU lowering does), which XLA fuses
# with the compare/select into one elementwise loop: bit-identical masks (benchmarks/check_fast_dropout.py),
# ~0.4 ms for that mask. Measured on the full DDPM++ cont. train step (batch 8, with the 1x1-conv change
# above): 3.07 s -> 2.65 s; on the small config within noise (146 -> 143 ms). Same masks on every backend.
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = 0x1BD11BDA


def _rotl32(v, r):
  return (v << jnp.uint32(r)) | (v >> jnp.uint32(32 - r))


def _threefry2x32(k0, k1, x0, x1):
  """Threefry-2x32 with 20 rounds (Salmon et al. 2011), as JAX's PRNG uses it; all uint32, unrolled."""
  ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(_THREEFRY_PARITY))
  x0 = x0 + ks[0]
  x1 = x1 + ks[1]
  for i in range(5):
    for r in _THREEFRY_ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = _rotl32(x1, r) ^ x0
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
  return x0, x1


def _threefry_raw_key(rng):
  """The uint32[2] threefry key data of `rng`, or None when it is not a (default) threefry key."""
  if jax.config.jax_threefry_partitionable is not True:
    return None
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    if rng.shape != () or "threefry" not in str(jax.random.key_impl(rng)):
      return None
    return jax.random.key_data(rng)
  if rng.shape == (2,) and rng.dtype == jnp.uint32 and jax.config.jax_default_prng_impl == "threefry2x32":
    return rng
  return None


def bernoulli_keep_mask(rng, keep_prob, shape):
  """`jax.random.bernoulli(rng, keep_prob, shape)` (float32 p, mode 'low'), bit for bit, without a loop."""
  key = _threefry_raw_key(rng)
  size = math.prod(shape)
  if key is None or size >= 2 ** 32:
    return jax.random.bernoulli(rng, keep_prob, shape)
  counts = jax.lax.iota(jnp.uint32, size).reshape(shape)  # the low word of the element index; high word 0
  a, b = _threefry2x32(key[0], key[1], jnp.zeros_like(counts), counts)
  bits = a ^ b
  # jax.random.uniform: 23 random mantissa bits under exponent 0 give a float in [1, 2); minus 1.
  floats = jax.lax.bitcast_convert_type((bits >> jnp.uint32(9)) | jnp.uint32(0x3F800000), jnp.float32) - 1.0
  return jnp.maximum(0.0, floats) < jnp.float32(keep_prob)


class Dropout(nn.Dropout):
  """`nn.Dropout` (same name, rng stream and masks) with the mask hash unrolled; see the note above.

  Being named `Dropout`, instances are auto-named `Dropout_k` like `nn.Dropout`, so the rng that
  `make_rng('dropout')` folds in for them is unchanged.
  """

  @nn.compact
  def __call__(self, inputs, deterministic=None, rng=None):
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    mask = self.keep_mask(inputs.shape, deterministic, rng)
    return jax.lax.select(mask, inputs / (1.0 - self.rate), jnp.zeros_like(inputs))

  def keep_mask(self, shape, deterministic=None, rng=None):
    """The boolean mask `__call__` would apply to an input of `shape` (None when it applies none), for a
    consumer that applies it in a pass of its own (`layerspp.conv_temb_norm`): where(mask, x / keep, 0)."""
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return None
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    mask_shape = tuple(1 if d in self.broadcast_dims else n for d, n in enumerate(shape))
    return jnp.broadcast_to(bernoulli_keep_mask(rng, 1.0 - self.rate, mask_shape), shape)


ACTIVATIONS = {
    "elu": nn.elu,
    "relu": nn.relu,
    "lrelu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
    "swish": nn.swish,
}


def get_act(name):
  """The activation function named by `config.model.nonlinearity`."""
  if name not in ACTIVATIONS:
    raise ValueError(f"model.nonlinearity={name!r} is not one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def get_timestep_embedding(timesteps, embedding_dim, max_positions=10000):
  """DDPM sinusoidal embedding of (float) time labels, shape (B,) -> (B, embedding_dim)."""
  assert timesteps.ndim == 1, timesteps.shape
  half_dim = embedding_dim // 2
  freq = math.log(max_positions) / (half_dim - 1)
  freqs = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -freq)
  args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  if embedding_dim % 2 == 1:
    emb = jnp.pad(emb, [[0, 0], [0, 1]])
  return emb


def rescale_to_model_range(x, centered):
  """Networks see data in [-1, 1]: non-centred data in [0, 1] is mapped with 2x - 1 inside the model."""
  return x if centered else 2.0 * x - 1.0




# ----------------------------------------------------------------------------------------------------------
# DDPM U-Net blocks (Ho et al. 2020). The class names are the module names stored in the 2021 checkpoints
# (`ResnetBlockDDPM_k`, `AttnBlock_k`, `Downsample_k`, `Upsample_k`), so they must not be renamed.
# (Imported here rather than at the top so that this section is a pure addition to the shared file.)
from typing import Callable, Optional  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def ddpm_group_norm():
  """The DDPM U-Net's GroupNorm: hard-wired to 32 groups (channels must be multiples of 32), eps 1e-6.

  Unlike `layerspp.group_norm` (NCSN++: min(C // 4, 32) groups), the DDPM paper's network never shrinks
  the group count, so its checkpoints and numerics depend on exactly 32 groups.
  """
  return nn.GroupNorm(num_groups=32, epsilon=1e-6)


class ResnetBlockDDPM(nn.Module):
  """DDPM residual block: GN, act, conv, + Dense(act(temb)), GN, act, dropout, conv(init 0); NIN shortcut.

  Submodules in creation order: GroupNorm_0, Conv_0, Dense_0 (only with a time embedding), GroupNorm_1,
  Dropout_0, Conv_1, NIN_0 (only when the channel count changes).
  """
  act: Callable[[jnp.ndarray], jnp.ndarray]
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x, temb=None, train=True):
    in_ch = x.shape[-1]
    out_ch = self.out_ch if self.out_ch else in_ch
    h = self.act(ddpm_group_norm()(x))
    h = ddpm_conv3x3(h, out_ch)
    if temb is not None:
      # A per-channel bias from the time embedding: the only way the label enters the network.
      h = h + nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(ddpm_group_norm()(h))
    h = Dropout(self.dropout)(h, deterministic=not train)
    # Zero-ish init of the last conv makes each block start out as (nearly) the identity.
    h = ddpm_conv3x3(h, out_ch, init_scale=0.0)
    if in_ch != out_ch:
      x = ddpm_conv3x3(x, out_ch) if self.conv_shortcut else NIN(out_ch)(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head spatial self-attention with a residual connection: GroupNorm_0, NIN_0..2 (q, k, v), NIN_3."""

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    h = ddpm_group_norm()(x)
    q = NIN(channels)(h)
    k = NIN(channels)(h)
    v = NIN(channels)(h)
    logits = jnp.einsum("bhwc,bHWc->bhwHW", q, k) * (channels ** -0.5)
    weights = nn.softmax(logits.reshape(batch, height, width, height * width), axis=-1)
    weights = weights.reshape(batch, height, width, height, width)
    h = jnp.einsum("bhwHW,bHWc->bhwc", weights, v)
    # The output projection starts at (almost) zero so the block starts as the identity.
    h = NIN(channels, init_scale=0.0)(h)
    return x + h


class Downsample(nn.Module):
  """Halve H and W: a stride-2 3x3 conv with TF 'SAME' padding (pads right/bottom), or 2x2 average pooling."""
  out_ch: Optional[int] = None
  with_conv: bool = False

  @nn.compact
  def __call__(self, x):
    out_ch = self.out_ch if self.out_ch else x.shape[-1]
    if self.with_conv:
      return ddpm_conv3x3(x, out_ch, stride=2)
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")


class Upsample(nn.Module):
  """Double H and W by nearest-neighbour repetition, optionally followed by a 3x3 conv."""
  out_ch: Optional[int] = None
  with_conv: bool = False

  @nn.compact
  def __call__(self, x):
    out_ch = self.out_ch if self.out_ch else x.shape[-1]
    h = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if self.with_conv:
      h = ddpm_conv3x3(h, out_ch)
    return h
