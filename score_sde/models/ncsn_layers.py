"""Layers of the NCSN family: NCSN v1 (Song & Ermon 2019) and NCSNv2 (Song & Ermon 2020) RefineNets.

Class names are the module names of the 2021 NCSNv2 checkpoints (`ResidualBlock_k`, `InstanceNorm2dPlus_k`,
`ConvMeanPool_k`, `RefineBlock_k` holding `RCUBlock_k`, `MSFBlock_k`, `CRPBlock_k`), so they must not be
renamed. The label-conditional variants used by NCSN v1 (`Conditional*`, `Cond*`) share the computation of
their unconditional twins and differ only in their `norm` hook: v1 normalises with ConditionalInstanceNorm++
before every activation, pooling and fusion, while NCSNv2's RefineNet path has no normalisation at all.

Convolutions use PyTorch's default initialisation (the original NCSN code is PyTorch): variance scaling
1/3, fan_in, uniform for the kernel, and the same distribution (bound 1/sqrt(fan_in)) for the bias.
"""
import math
from typing import Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

NORM_EPS = 1e-5  # PyTorch InstanceNorm2d's eps, also used for the ++ term


# ---------------------------------------------------------------------------------------------------------
# Convolutions


def _ncsn_kernel_init(init_scale):
  scale = 1e-10 if init_scale == 0 else init_scale
  return nn.initializers.variance_scaling(scale / 3.0, "fan_in", "uniform")


def _ncsn_bias_init(fan_in, init_scale):
  """Uniform(+-sqrt(scale / fan_in)): the kernel's distribution, as PyTorch initialises conv biases."""
  scale = 1e-10 if init_scale == 0 else init_scale
  bound = math.sqrt(scale / fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def ncsn_conv(x, out_planes, kernel_size, bias=True, dilation=1, init_scale=1.0):
  """A square stride-1 conv with 'SAME' padding (so dilated convs keep H and W), NCSN initialisation."""
  fan_in = kernel_size * kernel_size * x.shape[-1]
  return nn.Conv(out_planes, kernel_size=(kernel_size, kernel_size), padding="SAME", use_bias=bias,
                 kernel_dilation=(dilation, dilation), kernel_init=_ncsn_kernel_init(init_scale),
                 bias_init=_ncsn_bias_init(fan_in, init_scale))(x)


def ncsn_conv1x1(x, out_planes, bias=True, init_scale=1.0):
  return ncsn_conv(x, out_planes, 1, bias=bias, init_scale=init_scale)


def ncsn_conv3x3(x, out_planes, bias=True, dilation=1, init_scale=1.0):
  return ncsn_conv(x, out_planes, 3, bias=bias, dilation=dilation, init_scale=init_scale)


def dilated_conv3x3(x, out_planes, dilation, bias=True):
  """3x3 conv with dilation d and padding d: enlarges the receptive field without shrinking the image."""
  return ncsn_conv3x3(x, out_planes, bias=bias, dilation=dilation)


class ConvMeanPool(nn.Module):
  """Conv (Conv_0) then 2x2 mean pooling: the RefineNets' only way of halving H and W."""
  output_dim: int
  kernel_size: int = 3
  biases: bool = True

  @nn.compact
  def __call__(self, x):
    h = ncsn_conv(x, self.output_dim, self.kernel_size, bias=self.biases)
    return (h[:, ::2, ::2] + h[:, 1::2, ::2] + h[:, ::2, 1::2] + h[:, 1::2, 1::2]) / 4.0


# ---------------------------------------------------------------------------------------------------------
# Normalisation


def _normal_init(mean, stddev):
  def init(key, shape, dtype=jnp.float32):
    return mean + stddev * jax.random.normal(key, shape, dtype)

  return init


def _instance_norm_plus(x, alpha, gamma, beta):
  """InstanceNorm++: instance norm, plus alpha times each channel mean standardised across channels.

  Plain instance norm discards the per-channel means, which shifts colours; the ++ term puts their
  (normalised) relative offsets back. Biased variances throughout, as the 2021 JAX code computes them.
  """
  means = jnp.mean(x, axis=(1, 2))                                   # (B, C)
  m = jnp.mean(means, axis=-1, keepdims=True)
  v = jnp.var(means, axis=-1, keepdims=True)
  means_plus = (means - m) / jnp.sqrt(v + NORM_EPS)
  h = (x - means[:, None, None, :]) / jnp.sqrt(jnp.var(x, axis=(1, 2), keepdims=True) + NORM_EPS)
  h = h + means_plus[:, None, None, :] * alpha
  return gamma * h + beta


class InstanceNorm2dPlus(nn.Module):
  """Unconditional InstanceNorm++ (NCSNv2) with parameters alpha, gamma ~ N(1, 0.02) and beta = 0."""

  @nn.compact
  def __call__(self, x):
    shape = (1, 1, 1, x.shape[-1])
    alpha = self.param("alpha", _normal_init(1.0, 0.02), shape)
    gamma = self.param("gamma", _normal_init(1.0, 0.02), shape)
    beta = self.param("beta", nn.initializers.zeros, shape)
    return _instance_norm_plus(x, alpha, gamma, beta)


class ConditionalInstanceNorm2dPlus(nn.Module):
  """Label-conditional InstanceNorm++ (NCSN v1): gamma, alpha, beta looked up per noise level.

  One embedding row of width 3C per class (`Embed_0/embedding`), laid out [gamma | alpha | beta] as in the
  original PyTorch code; gamma and alpha start at N(1, 0.02) and beta at 0.
  """
  num_classes: int

  @nn.compact
  def __call__(self, x, y):
    channels = x.shape[-1]

    def init(key, shape, dtype=jnp.float32):
      scale_part = _normal_init(1.0, 0.02)(key, (shape[0], 2 * channels), dtype)
      return jnp.concatenate([scale_part, jnp.zeros((shape[0], channels), dtype)], axis=1)

    params = nn.Embed(self.num_classes, 3 * channels, embedding_init=init)(jnp.asarray(y, jnp.int32))
    gamma, alpha, beta = (p[:, None, None, :] for p in jnp.split(params, 3, axis=-1))
    return _instance_norm_plus(x, alpha, gamma, beta)


def _cond_norm(x, y, num_classes):
  """ConditionalInstanceNorm++ created in the calling module's scope (so it is named there)."""
  if num_classes is None or y is None:
    raise ValueError("conditional NCSN layers need num_classes and the integer noise labels y.")
  return ConditionalInstanceNorm2dPlus(num_classes=num_classes)(x, y)


# ---------------------------------------------------------------------------------------------------------
# Residual blocks of the encoder


class ResidualBlock(nn.Module):
  """Pre-activation residual block of the RefineNet encoder (NCSNv2: InstanceNorm++).

  resample='down' halves the resolution with ConvMeanPool, unless dilation > 1: the dilated RefineNet
  replaces the later downsamplings by dilated convs, so those blocks keep H and W. Creation order:
  norm_0, conv_0, norm_1, conv_1 (or ConvMeanPool_0), then the shortcut (conv or ConvMeanPool_1).
  """
  output_dim: int
  resample: Optional[str] = None
  act: Callable = nn.elu
  dilation: int = 1

  @nn.nowrap
  def norm(self, x, y):
    del y  # unconditional
    return InstanceNorm2dPlus()(x)

  @nn.compact
  def __call__(self, x, y=None):
    if self.resample not in (None, "down"):
      raise ValueError(f"resample={self.resample!r} is not one of None, 'down'.")
    in_dim, out_dim, dil = x.shape[-1], self.output_dim, self.dilation
    h = self.act(self.norm(x, y))
    if self.resample == "down":
      h = ncsn_conv3x3(h, in_dim, dilation=dil)
      h = self.act(self.norm(h, y))
      if dil > 1:
        h = dilated_conv3x3(h, out_dim, dil)
        shortcut = dilated_conv3x3(x, out_dim, dil)
      else:
        h = ConvMeanPool(out_dim)(h)
        shortcut = ConvMeanPool(out_dim, kernel_size=1)(x)
      return h + shortcut
    h = ncsn_conv3x3(h, out_dim, dilation=dil)
    h = self.act(self.norm(h, y))
    h = ncsn_conv3x3(h, out_dim, dilation=dil)
    if out_dim == in_dim:
      return h + x
    shortcut = dilated_conv3x3(x, out_dim, dil) if dil > 1 else ncsn_conv1x1(x, out_dim)
    return h + shortcut


class ConditionalResidualBlock(ResidualBlock):
  """ResidualBlock with ConditionalInstanceNorm++ (NCSN v1); call as block(x, y)."""
  num_classes: Optional[int] = None

  @nn.nowrap
  def norm(self, x, y):
    return _cond_norm(x, y, self.num_classes)


# ---------------------------------------------------------------------------------------------------------
# RefineNet decoder blocks (Lin et al. 2017): residual conv units, multi-resolution fusion, chained pooling


class RCUBlock(nn.Module):
  """Residual conv unit: n_blocks x (n_stages x [act, 3x3 conv without bias] + identity)."""
  features: int
  n_blocks: int
  n_stages: int
  act: Callable = nn.relu

  @nn.nowrap
  def norm(self, x, y):
    del y
    return x  # NCSNv2's decoder is not normalised

  @nn.compact
  def __call__(self, x, y=None):
    for _ in range(self.n_blocks):
      residual = x
      for _ in range(self.n_stages):
        x = ncsn_conv3x3(self.act(self.norm(x, y)), self.features, bias=False)
      x = x + residual
    return x


class MSFBlock(nn.Module):
  """Multi-resolution fusion: a 3x3 conv (with bias) per input, resized to `shape`, summed."""
  shape: Tuple[int, int]
  features: int
  interpolation: str = "bilinear"

  @nn.nowrap
  def norm(self, x, y):
    del y
    return x

  @nn.compact
  def __call__(self, xs, y=None):
    total = 0.0
    for x in xs:
      h = ncsn_conv3x3(self.norm(x, y), self.features, bias=True)
      total = total + resize(h, self.shape, self.interpolation)
    return total


class CRPBlock(nn.Module):
  """Chained residual pooling: act, then n_stages x [5x5 stride-1 pool, 3x3 conv], each added to the output.

  NCSNv2 pools with max (the PyTorch RefineBlock default); NCSN v1's conditional variant with average.
  """
  features: int
  n_stages: int
  act: Callable = nn.relu
  pool = "max"  # a class constant, not a field: it is what distinguishes the v1 and v2 blocks

  @nn.nowrap
  def norm(self, x, y):
    del y
    return x

  @nn.compact
  def __call__(self, x, y=None):
    x = self.act(x)
    path = x
    for _ in range(self.n_stages):
      path = self.norm(path, y)
      path = _pool5x5(path, self.pool)
      path = ncsn_conv3x3(path, self.features, bias=False)
      x = path + x
    return x


def _pool5x5(x, kind):
  """5x5 stride-1 pooling padded to keep the size (max: -inf padding; avg: zeros counted, as PyTorch)."""
  if kind == "max":
    return nn.max_pool(x, window_shape=(5, 5), strides=(1, 1), padding="SAME")
  return nn.avg_pool(x, window_shape=(5, 5), strides=(1, 1), padding="SAME", count_include_pad=True)


INTERPOLATIONS = {"bilinear": "bilinear", "nearest_neighbor": "nearest"}


def resize(x, shape, interpolation):
  """Resizes NHWC `x` to spatial `shape` (`model.interpolation`: bilinear | nearest_neighbor)."""
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f"model.interpolation={interpolation!r} is not one of {sorted(INTERPOLATIONS)}.")
  if tuple(x.shape[1:3]) == tuple(shape):
    return x
  return jax.image.resize(x, (x.shape[0], *shape, x.shape[-1]), INTERPOLATIONS[interpolation])


class RefineBlock(nn.Module):
  """RefineNet block: RCU (2x2) per input, MSF fusion to `output_shape` (unless `start`), CRP, output RCU.

  The output RCU has 3 blocks in the last (`end`) RefineBlock and 1 otherwise. Creation order:
  RCUBlock_0..n-1 (inputs), MSFBlock_0, CRPBlock_0, RCUBlock_n (output).
  """
  output_shape: Tuple[int, int]
  features: int
  act: Callable = nn.relu
  interpolation: str = "bilinear"
  start: bool = False
  end: bool = False

  @nn.nowrap
  def block_classes(self):
    """(RCU, MSF, CRP) classes and extra constructor kwargs; overridden by the conditional variant."""
    return RCUBlock, MSFBlock, CRPBlock, {}

  @nn.compact
  def __call__(self, xs: Sequence[jnp.ndarray], y=None):
    if self.start != (len(xs) == 1):
      raise ValueError(f"RefineBlock(start={self.start}) got {len(xs)} inputs; "
                       "the first (start) block takes 1, the others 2.")
    rcu, msf, crp, kw = self.block_classes()
    hs = [rcu(features=x.shape[-1], n_blocks=2, n_stages=2, act=self.act, **kw)(x, y) for x in xs]
    if self.start:
      h = hs[0]
    else:
      h = msf(shape=tuple(self.output_shape), features=self.features, interpolation=self.interpolation,
              **kw)(hs, y)
    h = crp(features=self.features, n_stages=2, act=self.act, **kw)(h, y)
    return rcu(features=self.features, n_blocks=3 if self.end else 1, n_stages=2, act=self.act, **kw)(h, y)


# Conditional decoder blocks (NCSN v1): ConditionalInstanceNorm++ before every activation / pool / fusion.


class CondRCUBlock(RCUBlock):
  num_classes: Optional[int] = None

  @nn.nowrap
  def norm(self, x, y):
    return _cond_norm(x, y, self.num_classes)


class CondMSFBlock(MSFBlock):
  num_classes: Optional[int] = None

  @nn.nowrap
  def norm(self, x, y):
    return _cond_norm(x, y, self.num_classes)


class CondCRPBlock(CRPBlock):
  num_classes: Optional[int] = None
  pool = "avg"  # the original NCSN code's CondCRPBlock averages (its attribute is misleadingly named maxpool)

  @nn.nowrap
  def norm(self, x, y):
    return _cond_norm(x, y, self.num_classes)


class CondRefineBlock(RefineBlock):
  num_classes: Optional[int] = None

  @nn.nowrap
  def block_classes(self):
    return CondRCUBlock, CondMSFBlock, CondCRPBlock, {"num_classes": self.num_classes}
