"""NCSN++ / DDPM++ building blocks (Song et al. 2021, App. H).

Module and parameter names matter: each block creates its submodules in the same order as the 2021 Flax
code, so Flax's automatic names (`GroupNorm_0`, `Conv_0`, `Dense_0`, ...) match the published checkpoints.
GroupNorm everywhere uses min(C // 4, 32) groups and eps 1e-6. Every block that makes a conv, GroupNorm or
dropout computes it with its `ops` field (`ops.Ops`, default the pure-JAX `ops.XLA`), passed down from NCSNpp.
"""
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde.models import layers
from score_sde.models import ops as ops_lib
from score_sde.models import up_or_down_sampling as updown

conv1x1 = layers.ddpm_conv1x1
conv3x3 = layers.ddpm_conv3x3


def _groups(channels):
  return min(channels // 4, 32)


def group_norm(x, act=None, ops=ops_lib.XLA):
  """act(GroupNorm(x)) as NCSN++ uses it (`act` None: no activation), computed by `ops.group_norm_act`;
  creates one `GroupNorm_k` in the caller's scope."""
  return ops.group_norm_act(x, _groups(x.shape[-1]), act)


def conv_temb_norm(h, temb, act, out_ch, dropout=None, train=True, ops=ops_lib.XLA):
  """dropout(act(GroupNorm(conv3x3(h) + Dense(act(temb))))) as the residual blocks compute it, by
  `ops.conv_temb_norm`; creates `Conv_k`, `Dense_k` (when temb is given) and `GroupNorm_k` in the caller's
  scope, in that order; `dropout` is the caller's `ops.dropout` module or None."""
  return ops.conv_temb_norm(h, temb, act, out_ch, _groups(out_ch), dropout, train)


def skip_sum(x, h, skip_rescale):
  """Residual sum; with `skip_rescale` divided by sqrt(2) so the variance does not grow with depth (a Python
  float: a NumPy scalar would promote bfloat16 activations to float32)."""
  return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


class GaussianFourierProjection(nn.Module):
  """Random Fourier features of a scalar: [sin(2 pi x W), cos(2 pi x W)], W ~ N(0, scale^2) frozen."""
  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    w = self.param("W", jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
    # W is a fixed random basis, not a trainable weight: keep the optimiser (and weight decay) off it.
    w = jax.lax.stop_gradient(w)
    x_proj = x[:, None] * w[None, :] * 2 * jnp.pi
    return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class Combine(nn.Module):
  """Merges an input-pyramid image `x` into features `y`: 1x1 conv of x to y's width, then sum or concat."""
  method: str = "cat"
  ops: ops_lib.Ops = ops_lib.XLA

  @nn.compact
  def __call__(self, x, y):
    h = conv1x1(x, y.shape[-1], ops=self.ops)
    if self.method == "cat":
      return jnp.concatenate([h, y], axis=-1)
    if self.method == "sum":
      return h + y
    raise ValueError(f"Combine method {self.method!r} is not one of ['cat', 'sum'].")


class AttnBlockpp(nn.Module):
  """Single-head self-attention over all pixels (q, k, v and output are NINs), with a residual."""
  skip_rescale: bool = False
  init_scale: float = 0.0
  ops: ops_lib.Ops = ops_lib.XLA

  @nn.compact
  def __call__(self, x):
    b, height, width, c = x.shape
    h = group_norm(x, ops=self.ops)
    q = layers.NIN(c)(h)
    k = layers.NIN(c)(h)
    v = layers.NIN(c)(h)
    logits = jnp.einsum("bhwc,bHWc->bhwHW", q, k) * (int(c) ** (-0.5))
    weights = jax.nn.softmax(logits.reshape(b, height, width, height * width), axis=-1)
    weights = weights.reshape(b, height, width, height, width)
    h = jnp.einsum("bhwHW,bHWc->bhwc", weights, v)
    h = layers.NIN(c, init_scale=self.init_scale)(h)
    return skip_sum(x, h, self.skip_rescale)


class Upsample(nn.Module):
  """2x upsampling: nearest (+ 3x3 conv) or FIR (fused with a 3x3 `Conv2d` when `with_conv`)."""
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  ops: ops_lib.Ops = ops_lib.XLA

  @nn.compact
  def __call__(self, x):
    out_ch = self.out_ch if self.out_ch else x.shape[-1]
    if not self.fir:
      h = updown.naive_upsample_2d(x, factor=2)
      if self.with_conv:
        h = conv3x3(h, out_ch, ops=self.ops)
      return h
    if not self.with_conv:
      return updown.upsample_2d(x, self.fir_kernel, factor=2)
    return updown.Conv2d(out_ch, kernel=3, up=True, resample_kernel=self.fir_kernel, use_bias=True,
                         kernel_init=layers.default_init())(x)


class Downsample(nn.Module):
  """2x downsampling: stride-2 3x3 conv or average pooling, or FIR (fused with a 3x3 `Conv2d`)."""
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  ops: ops_lib.Ops = ops_lib.XLA

  @nn.compact
  def __call__(self, x):
    out_ch = self.out_ch if self.out_ch else x.shape[-1]
    if not self.fir:
      if self.with_conv:
        # TF-style 'SAME' with stride 2 pads right/bottom only, as the DDPM code does.
        return conv3x3(x, out_ch, stride=2, ops=self.ops)
      return updown.naive_downsample_2d(x, factor=2)
    if not self.with_conv:
      return updown.downsample_2d(x, self.fir_kernel, factor=2)
    return updown.Conv2d(out_ch, kernel=3, down=True, resample_kernel=self.fir_kernel, use_bias=True,
                         kernel_init=layers.default_init())(x)


class ResnetBlockDDPMpp(nn.Module):
  """DDPM residual block: GN, act, conv, +temb, GN, act, dropout, conv(init_scale); NIN shortcut."""
  act: Callable[[Any], Any]
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  skip_rescale: bool = False
  init_scale: float = 0.0
  ops: ops_lib.Ops = ops_lib.XLA

  @nn.compact
  def __call__(self, x, temb=None, train=True):
    c = x.shape[-1]
    out_ch = self.out_ch if self.out_ch else c
    h = group_norm(x, self.act, ops=self.ops)
    h = conv_temb_norm(h, temb, self.act, out_ch, self.ops.dropout(self.dropout), train, ops=self.ops)
    h = conv3x3(h, out_ch, init_scale=self.init_scale, ops=self.ops)
    if c != out_ch:
      x = conv3x3(x, out_ch, ops=self.ops) if self.conv_shortcut else layers.NIN(out_ch)(x)
    return skip_sum(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
  """BigGAN residual block: resampling (FIR or naive) inside the block on both paths; 1x1 conv shortcut."""
  act: Callable[[Any], Any]
  up: bool = False
  down: bool = False
  out_ch: Optional[int] = None
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0
  ops: ops_lib.Ops = ops_lib.XLA

  def _resample(self, x):
    if self.up:
      if self.fir:
        return updown.upsample_2d(x, self.fir_kernel, factor=2)
      return updown.naive_upsample_2d(x, factor=2)
    if self.down:
      if self.fir:
        return updown.downsample_2d(x, self.fir_kernel, factor=2)
      return updown.naive_downsample_2d(x, factor=2)
    return x

  @nn.compact
  def __call__(self, x, temb=None, train=True):
    if self.up and self.down:
      raise ValueError("ResnetBlockBigGANpp cannot both upsample and downsample.")
    c = x.shape[-1]
    out_ch = self.out_ch if self.out_ch else c
    h = group_norm(x, self.act, ops=self.ops)
    h = self._resample(h)
    x = self._resample(x)
    h = conv_temb_norm(h, temb, self.act, out_ch, self.ops.dropout(self.dropout), train, ops=self.ops)
    h = conv3x3(h, out_ch, init_scale=self.init_scale, ops=self.ops)
    if c != out_ch or self.up or self.down:
      x = conv1x1(x, out_ch, ops=self.ops)
    return skip_sum(x, h, self.skip_rescale)
