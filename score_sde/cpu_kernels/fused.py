"""The `ops.Ops` of this package: how the networks compute in the CPU train step.

* `conv_general_dilated`: every plain NHWC float32 conv (3x3 and 1x1, one group, no dilation) in oneDNN
  (`onednn_conv.conv2d`); anything else as `ops.XLA` computes it.
* `group_norm_act`: GroupNorm followed by SiLU or nothing, float32, as one native call per pass
  (`native_norm.group_norm`) in a module named `GroupNorm` (so Flax numbers it `GroupNorm_k` in the same
  sequence as `nn.GroupNorm`: the same checkpoint slot); another activation or dtype as `ops.XLA` does it.
* `conv_temb_norm`: the residual blocks' conv -> + time embedding -> GroupNorm -> act -> dropout with the
  conv's bias and the time-embedding projection entering the GroupNorm call as one (N, C) shift, and the
  dropout mask (drawn by JAX from the dropout module's own rng stream, `dropout.Dropout.keep_mask`) applied
  inside it: no passes over h to add or mask, no reductions over h for the bias and embedding gradients.
  The conv is `Conv`, which returns its bias instead of adding it.
* `dropout`: `dropout.Dropout` (nn.Dropout's masks, bit for bit, with the hash unrolled).

Parameters, their names and initialisers are `ops.XLA`'s; results agree to float32 rounding (tests).
The custom calls are reverse-mode only (no `jvp`), so only the train step's loss uses these ops.
"""
import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from score_sde.cpu_kernels import dropout as dropout_lib
from score_sde.cpu_kernels import native_norm, onednn_conv
from score_sde.models import layers, ops


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` as `nn.Conv` calls it: in oneDNN for plain NHWC float32 convs."""
  plain = ops.is_plain_nhwc_conv(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count)
  if plain and lhs.dtype == rhs.dtype == jnp.float32:
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    return onednn_conv.conv2d(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))
  return ops.xla_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                      feature_group_count=feature_group_count, precision=precision)


class Conv(nn.Module):
  """A stride-1 'SAME' NHWC conv that returns its bias instead of adding it: `(conv(x, kernel), bias)`, for
  a consumer that adds the bias in a pass of its own (`conv_temb_norm`). Parameters are `nn.Conv`'s
  (`kernel` HWIO, `bias`) with the DDPM initialisers, and the class name makes Flax number it `Conv_k` in the
  same sequence as `nn.Conv`."""
  features: int
  kernel_size: tuple = (3, 3)
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", layers.default_init(self.init_scale),
                        (*self.kernel_size, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    dimension_numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
    y = conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=dimension_numbers)
    return y, bias


class GroupNorm(nn.Module):
  """`flax.linen.GroupNorm`'s parameters (`scale`, `bias`) and result, followed by `act` ('none' or 'silu')
  and, given a mask, dropout with `keep_prob`, computed as one native call per pass (`native_norm.py`). Its
  class name makes Flax number it `GroupNorm_k` in the same sequence as `nn.GroupNorm`, so either module
  fills the same checkpoint slot."""
  num_groups: int
  epsilon: float
  act: str = "none"
  keep_prob: float = 1.0

  @nn.compact
  def __call__(self, x, shift=None, keep=None):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    return native_norm.group_norm(x, scale, bias, self.num_groups, self.epsilon, self.act, shift, keep,
                                  self.keep_prob)


def _native_act(x, act):
  """The native kernel's name for `act` ('silu' or 'none') when act(GroupNorm(x)) runs natively: float32,
  SiLU or no activation. None otherwise."""
  if x.dtype == jnp.float32 and act in (None, nn.swish):
    return "none" if act is None else "silu"
  return None


def group_norm_act(x, num_groups, act=None, epsilon=1e-6):
  """`ops.Ops.group_norm_act`: one native call per pass where `_native_act` allows, else `ops.XLA`'s."""
  native = _native_act(x, act)
  if native:
    return GroupNorm(num_groups, epsilon, native)(x)
  return ops.xla_group_norm_act(x, num_groups, act, epsilon)


def conv_temb_norm(h, temb, act, out_ch, num_groups, dropout=None, train=True):
  """`ops.Ops.conv_temb_norm` as one GroupNorm call per pass (see the module note); creates `Conv_k`,
  `Dense_k` (when temb is given) and `GroupNorm_k` in the caller's scope, as `ops.XLA` does."""
  native = (_native_act(h, act) and (dropout is None or (dropout.rate < 1.0 and hasattr(dropout, "keep_mask"))))
  if not native:
    return ops.unfused_conv_temb_norm(h, temb, act, out_ch, num_groups, dropout, train,
                                      conv_general_dilated=conv_general_dilated, group_norm_act=group_norm_act)
  h, conv_bias = Conv(out_ch)(h)
  shift = jnp.broadcast_to(conv_bias, (h.shape[0], out_ch))
  if temb is not None:
    shift = shift + nn.Dense(out_ch, kernel_init=layers.default_init())(act(temb))
  keep = None if dropout is None else dropout.keep_mask(h.shape, deterministic=not train)
  keep_prob = 1.0 if keep is None else 1.0 - dropout.rate
  return GroupNorm(num_groups, 1e-6, _native_act(h, act), keep_prob)(h, shift, keep)


OPS = ops.Ops(name="onednn", conv_general_dilated=conv_general_dilated, group_norm_act=group_norm_act,
              conv_temb_norm=conv_temb_norm, dropout=dropout_lib.Dropout)
