"""The noise-conditional WideResNet classifier of class-conditional sampling (Song et al. 2021, App. I.1).

A WideResNet (Zagoruyko & Komodakis 2016; WRN-28-10 for CIFAR-10: 4 blocks per group, width 10) that reads a
noisy image x(t) and its noise level sigma (the marginal std at t) and returns class logits; its gradient
grad_x log p_t(y | x) steers the PC sampler (`score_sde.controllable_generation`). As in the 2021 network:

  * each image is standardised on its own, (x - mean) / max(std, 1 / sqrt(D)), so the classifier is blind to
    the data's affine scaling;
  * sigma enters as a Gaussian Fourier embedding of log sigma (128 frequencies of scale 16), then
    Dense(512) -> swish -> Dense(512); every block adds Dense(channels)(swish(embedding)) after its first conv;
  * GroupNorm (min(C / 4, 32) groups, eps 1e-5) + ReLU where the original WideResNet has batch norm, so the
    logits of an example do not depend on the rest of its batch (the sampler's gradient is per example);
  * the skip path is the identity, average-pooled and zero-padded in channels where a group changes them
    (no 1x1 convolutions); convolutions have no bias and Kaiming-normal (fan_out) kernels, the last Dense a
    U(-1/sqrt(K), 1/sqrt(K)) kernel.

Parameter names are those of the 2021 Flax module (GaussianFourierProjection_0, Dense_0, Dense_1, init_conv,
WideResnetGroup_{0,1,2}/WideResnetBlock_k/{init_bn, conv1, Dense_0, bn_2, conv2}, pre-pool-bn, Dense_2), so
its released CIFAR-10 checkpoint keeps its layout.
"""
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.models.layerspp import GaussianFourierProjection

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _last_dense_init(key, shape, dtype=jnp.float32):
  bound = 1.0 / np.sqrt(shape[1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _norm_relu(x, name, relu=True):
  x = nn.GroupNorm(num_groups=min(x.shape[-1] // 4, 32), epsilon=1e-5, name=name)(x)
  return nn.relu(x) if relu else x


def _shortcut(block_x, x):
  """x brought to block_x's shape: average-pooled by the stride, zero-padded to the new channel count."""
  if block_x.shape[-1] != x.shape[-1]:
    stride = x.shape[-2] // block_x.shape[-2]
    x = nn.avg_pool(x, (stride, stride), (stride, stride))
    x = jnp.pad(x, [(0, 0), (0, 0), (0, 0), (0, block_x.shape[-1] - x.shape[-1])])
  return block_x + x


class WideResnetBlock(nn.Module):
  channels: int
  strides: Tuple[int, int] = (1, 1)
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x, temb):
    if self.activate_before_residual:  # the first block normalises the input of both paths
      x = _norm_relu(x, "init_bn")
      h = x
    else:
      h = _norm_relu(x, "init_bn")
    h = nn.Conv(self.channels, (3, 3), self.strides, padding="SAME", use_bias=False, kernel_init=_conv_init,
                name="conv1")(h)
    h = h + nn.Dense(self.channels)(nn.swish(temb))[:, None, None, :]
    h = _norm_relu(h, "bn_2")
    h = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init, name="conv2")(h)
    return _shortcut(h, x)


class WideResnetGroup(nn.Module):
  blocks: int
  channels: int
  strides: Tuple[int, int] = (1, 1)
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x, temb):
    for i in range(self.blocks):
      x = WideResnetBlock(self.channels, self.strides if i == 0 else (1, 1),
                          activate_before_residual=self.activate_before_residual and i == 0)(x, temb)
    return x


class WideResNet(nn.Module):
  """logits = WideResNet(x, sigma): x (B, H, W, C) noisy images, sigma (B,) their marginal stds."""
  blocks_per_group: int = 4        # (depth - 4) / 6: 4 for WRN-28
  channel_multiplier: int = 10     # the width k of WRN-28-k
  num_classes: int = 10
  embedding_size: int = 128
  fourier_scale: float = 16.0

  @nn.compact
  def __call__(self, x, sigma):
    d = np.prod(x.shape[1:])
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    std = jnp.std(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) / jnp.maximum(std, 1.0 / np.sqrt(d))
    temb = GaussianFourierProjection(embedding_size=self.embedding_size, scale=self.fourier_scale)(jnp.log(sigma))
    temb = nn.Dense(4 * self.embedding_size)(temb)
    temb = nn.Dense(4 * self.embedding_size)(nn.swish(temb))
    x = nn.Conv(16, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init, name="init_conv")(x)
    k = self.channel_multiplier
    x = WideResnetGroup(self.blocks_per_group, 16 * k, activate_before_residual=True)(x, temb)
    x = WideResnetGroup(self.blocks_per_group, 32 * k, (2, 2))(x, temb)
    x = WideResnetGroup(self.blocks_per_group, 64 * k, (2, 2))(x, temb)
    x = _norm_relu(x, "pre-pool-bn")
    x = jnp.mean(x, axis=(1, 2))  # global average pooling
    return nn.Dense(self.num_classes, kernel_init=_last_dense_init)(x)
