"""Resampling for NCSN++: StyleGAN2-style FIR up/down sampling ("upfirdn"), naive resampling, FIR convs.

Everything here works on NHWC arrays. A FIR kernel is given as a 1-D list of taps (e.g. (1, 3, 3, 1)); it
becomes the normalised outer product with itself, so a constant image stays constant after downsampling
(gain 1) and after upsampling (gain factor**2 makes up for the inserted zeros).

`upsample_conv_2d` / `conv_downsample_2d` fuse a 3x3 conv with the FIR resampling the way StyleGAN2 does
(a transposed conv followed by a FIR, or a FIR followed by a strided conv), which avoids filtering the
larger of the two channel counts twice. `Conv2d` is the module that holds their weights; its parameters are
named `weight` (HWIO) and `bias`, as in the 2021 checkpoints.
"""
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.models import layers

_DIMS = ("NHWC", "HWIO", "NHWC")


def setup_kernel(k):
  """A normalised 2-D FIR kernel from 1-D taps (outer product) or from a square 2-D kernel."""
  k = np.asarray(k, dtype=np.float32)
  if k.ndim == 1:
    k = np.outer(k, k)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f"FIR kernel must be 1-D taps or a square 2-D array, got shape {k.shape}.")
  return k / np.sum(k)


def upfirdn_2d(x, k, up=1, down=1, pad0=0, pad1=0):
  """Upsample (insert up-1 zeros after every sample), pad, convolve with `k`, keep every `down`-th sample.

  Same on both spatial axes, each channel filtered on its own. Negative pads crop. `k` is applied as a
  true convolution (flipped), which only matters for asymmetric kernels.
  """
  k = np.asarray(k, dtype=np.float32)
  channels = x.shape[-1]
  # lax.pad does the zero insertion (interior padding) and the edge padding/cropping in one op; the
  # trailing up-1 zeros after the last sample are part of the upsampled signal, hence pad1 + up - 1.
  cfg = (pad0, pad1 + up - 1, up - 1)
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), cfg, cfg, (0, 0, 0)])
  # Depthwise correlation with the flipped kernel == convolution with the kernel.
  w = jnp.asarray(np.tile(k[::-1, ::-1, None, None], (1, 1, 1, channels)), dtype=x.dtype)
  return jax.lax.conv_general_dilated(x, w, window_strides=(down, down), padding="VALID",
                                      dimension_numbers=_DIMS, feature_group_count=channels)


def _fir_kernel(k, factor, gain):
  return setup_kernel([1] * factor if k is None else k) * gain


def upsample_2d(x, k=None, factor=2, gain=1):
  """FIR upsampling by `factor` (default kernel: nearest neighbour). Output (B, H*f, W*f, C)."""
  k = _fir_kernel(k, factor, gain * factor ** 2)
  p = k.shape[0] - factor
  return upfirdn_2d(x, k, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x, k=None, factor=2, gain=1):
  """FIR downsampling by `factor` (default kernel: box filter). Output (B, H/f, W/f, C)."""
  k = _fir_kernel(k, factor, gain)
  p = k.shape[0] - factor
  return upfirdn_2d(x, k, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def upsample_conv_2d(x, w, k=None, factor=2, gain=1):
  """Transposed conv with stride `factor` and HWIO weights `w`, then a FIR: a conv on the upsampled image.

  The transposed conv (TF `conv2d_transpose` of the spatially flipped, in/out-swapped kernel, as StyleGAN2
  writes it) equals a plain correlation with `w` of the zero-dilated input with full (kernel-1) padding,
  which is what we compute. Output (B, H*f, W*f, out_channels).
  """
  kh, kw = w.shape[0], w.shape[1]
  if kh != kw:
    raise ValueError(f"upsample_conv_2d needs a square conv kernel, got {w.shape}.")
  k = _fir_kernel(k, factor, gain * factor ** 2)
  p = (k.shape[0] - factor) - (kw - 1)
  x = jax.lax.conv_general_dilated(x, w.astype(x.dtype), window_strides=(1, 1),
                                   padding=[(kh - 1, kh - 1), (kw - 1, kw - 1)],
                                   lhs_dilation=(factor, factor), dimension_numbers=_DIMS)
  return upfirdn_2d(x, k, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def conv_downsample_2d(x, w, k=None, factor=2, gain=1):
  """A FIR, then a conv with stride `factor` and HWIO weights `w`. Output (B, H/f, W/f, out_channels)."""
  kh, kw = w.shape[0], w.shape[1]
  if kh != kw:
    raise ValueError(f"conv_downsample_2d needs a square conv kernel, got {w.shape}.")
  k = _fir_kernel(k, factor, gain)
  p = (k.shape[0] - factor) + (kw - 1)
  x = upfirdn_2d(x, k, pad0=(p + 1) // 2, pad1=p // 2)
  return jax.lax.conv_general_dilated(x, w.astype(x.dtype), window_strides=(factor, factor),
                                      padding="VALID", dimension_numbers=_DIMS)


def naive_upsample_2d(x, factor=2):
  """Nearest-neighbour upsampling: every pixel becomes a factor x factor block."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
  return x.reshape(b, h * factor, w * factor, c)


def naive_downsample_2d(x, factor=2):
  """Average pooling over non-overlapping factor x factor blocks."""
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


class Conv2d(nn.Module):
  """A square conv, optionally fused with FIR upsampling (`up`) or downsampling (`down`) by 2.

  Parameters `weight` (HWIO) and `bias`, the names the 2021 checkpoints use for these layers.
  """
  fmaps: int
  kernel: int
  up: bool = False
  down: bool = False
  resample_kernel: Sequence[int] = (1, 3, 3, 1)
  use_bias: bool = True
  kernel_init: Optional[Callable[..., Any]] = None

  @nn.compact
  def __call__(self, x):
    if self.up and self.down:
      raise ValueError("Conv2d cannot both upsample and downsample.")
    if self.kernel < 1 or self.kernel % 2 != 1:
      raise ValueError(f"Conv2d needs an odd kernel size, got {self.kernel}.")
    init = self.kernel_init if self.kernel_init is not None else layers.default_init()
    w = self.param("weight", init, (self.kernel, self.kernel, x.shape[-1], self.fmaps))
    if self.up:
      x = upsample_conv_2d(x, w, k=self.resample_kernel)
    elif self.down:
      x = conv_downsample_2d(x, w, k=self.resample_kernel)
    else:
      x = jax.lax.conv_general_dilated(x, w.astype(x.dtype), window_strides=(1, 1), padding="SAME",
                                       dimension_numbers=_DIMS)
    if self.use_bias:
      b = self.param("bias", nn.initializers.zeros, (self.fmaps,))
      x = x + b.astype(x.dtype)
    return x
