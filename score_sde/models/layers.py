"""Building blocks shared by every network: initialisers, 1x1/3x3 convs, NIN, activations, time embedding.

Convs created by these helpers are plain `nn.Conv` modules made inside the caller's compact method, so
they take the caller's automatic names (`Conv_0`, `Conv_1`, ...) exactly as the 2021 checkpoints expect. How
they compute is the `ops` (`ops.Ops`) passed down from the model; the default `ops.XLA` is pure JAX.
"""
import math

import flax.linen as nn
import jax.numpy as jnp

from score_sde.models import ops as ops_lib


def default_init(scale=1.0):
  """DDPM initialisation: variance scaling, fan_avg, uniform (a scale of 0 means 1e-10).

  The fans follow the HWIO kernel layout (fan_in = kh*kw*C_in), as TensorFlow's DDPM code and the
  PyTorch port compute them. (The 2021 JAX code computed fans in PyTorch's axis order on HWIO kernels,
  which shrank conv initialisations; we follow the DDPM paper's code.)
  """
  scale = 1e-10 if scale == 0 else scale
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def ddpm_conv1x1(x, out_planes, stride=1, bias=True, dilation=1, init_scale=1.0, ops=ops_lib.XLA):
  """1x1 conv with the DDPM initialisation, computed by `ops.conv_general_dilated`."""
  return nn.Conv(out_planes, kernel_size=(1, 1), strides=(stride, stride), padding="SAME",
                 use_bias=bias, kernel_dilation=(dilation, dilation),
                 kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                 conv_general_dilated=ops.conv_general_dilated)(x)


def ddpm_conv3x3(x, out_planes, stride=1, bias=True, dilation=1, init_scale=1.0, ops=ops_lib.XLA):
  """3x3 conv with the DDPM initialisation; 'SAME' padding (with stride 2: pad right/bottom, as TF); computed
  by `ops.conv_general_dilated`."""
  return nn.Conv(out_planes, kernel_size=(3, 3), strides=(stride, stride), padding="SAME",
                 use_bias=bias, kernel_dilation=(dilation, dilation),
                 kernel_init=default_init(init_scale), bias_init=nn.initializers.zeros,
                 conv_general_dilated=ops.conv_general_dilated)(x)


class NIN(nn.Module):
  """Network-in-network: a per-pixel linear map with parameters `W` (in, out) and `b`."""
  num_units: int
  init_scale: float = 0.1

  @nn.compact
  def __call__(self, x):
    w = self.param("W", default_init(self.init_scale), (x.shape[-1], self.num_units))
    b = self.param("b", nn.initializers.zeros, (self.num_units,))
    # As `jnp.dot` on (N*H*W, C): the same math and parameters as einsum("...c,cd->...d").
    return jnp.dot(x.reshape(-1, x.shape[-1]), w).reshape(x.shape[:-1] + (self.num_units,)) + b


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
  ops: ops_lib.Ops = ops_lib.XLA

  @nn.compact
  def __call__(self, x, temb=None, train=True):
    in_ch = x.shape[-1]
    out_ch = self.out_ch if self.out_ch else in_ch
    h = self.act(ddpm_group_norm()(x))
    h = ddpm_conv3x3(h, out_ch, ops=self.ops)
    if temb is not None:
      # A per-channel bias from the time embedding: the only way the label enters the network.
      h = h + nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(ddpm_group_norm()(h))
    h = self.ops.dropout(self.dropout)(h, deterministic=not train)
    # Zero-ish init of the last conv makes each block start out as (nearly) the identity.
    h = ddpm_conv3x3(h, out_ch, init_scale=0.0, ops=self.ops)
    if in_ch != out_ch:
      x = ddpm_conv3x3(x, out_ch, ops=self.ops) if self.conv_shortcut else NIN(out_ch)(x)
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
  ops: ops_lib.Ops = ops_lib.XLA

  @nn.compact
  def __call__(self, x):
    out_ch = self.out_ch if self.out_ch else x.shape[-1]
    if self.with_conv:
      return ddpm_conv3x3(x, out_ch, stride=2, ops=self.ops)
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")


class Upsample(nn.Module):
  """Double H and W by nearest-neighbour repetition, optionally followed by a 3x3 conv."""
  out_ch: Optional[int] = None
  with_conv: bool = False
  ops: ops_lib.Ops = ops_lib.XLA

  @nn.compact
  def __call__(self, x):
    out_ch = self.out_ch if self.out_ch else x.shape[-1]
    h = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if self.with_conv:
      h = ddpm_conv3x3(h, out_ch, ops=self.ops)
    return h
