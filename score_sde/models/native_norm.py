"""GroupNorm followed by SiLU (or nothing) on the CPU as one custom call per pass, for the train step.

`group_norm(x, scale, bias, groups, eps, act)` computes what `act(flax.linen.GroupNorm(groups, eps)(x))`
computes (biased variance, statistics over H, W and the group's channels, per-channel affine), with a
custom VJP whose forward and backward passes are one XLA FFI call each (`native_norm.cc`, built into the
same library as the oneDNN convolutions, see `onednn_conv.library`). XLA:CPU runs the same computation as
5-8 thunks per pass. Reverse mode only, so `layerspp.group_norm` routes here only inside
`layers.conv_impl("onednn")`, i.e. in the CPU train step.
"""
import functools

import jax
import numpy as np

from score_sde.models import onednn_conv

ACTS = {"none": 0, "silu": 1}


def _check(x, scale, groups, act):
  if act not in ACTS:
    raise ValueError(f"native GroupNorm activation {act!r} is not one of {sorted(ACTS)}.")
  if x.shape[-1] % groups or scale.shape != (x.shape[-1],):
    raise ValueError(f"GroupNorm of {x.shape} into {groups} groups with scale {scale.shape}: the channel count "
                     "must divide into the groups and match scale.")


def _forward(x, scale, bias, groups, eps, act):
  _check(x, scale, groups, act)
  onednn_conv.library()
  stats = jax.ShapeDtypeStruct((x.shape[0], groups), x.dtype)
  return jax.ffi.ffi_call("NativeGroupNormFwd", (jax.ShapeDtypeStruct(x.shape, x.dtype), stats, stats))(
      x, scale, bias, groups=np.int64(groups), eps=np.float32(eps), act=np.int64(ACTS[act]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def group_norm(x, scale, bias, groups, eps, act="none"):
  """act(GroupNorm(x) * scale + bias) for float32 x of shape [N, ..., C]; act is 'none' or 'silu'."""
  return _forward(x, scale, bias, groups, eps, act)[0]


def _group_norm_fwd(x, scale, bias, groups, eps, act):
  y, mean, rstd = _forward(x, scale, bias, groups, eps, act)
  return y, (x, scale, bias, mean, rstd)


def _group_norm_bwd(groups, eps, act, residuals, dy):
  del eps  # the saved rstd already holds it
  x, scale, bias, mean, rstd = residuals
  out = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(scale.shape, scale.dtype),
         jax.ShapeDtypeStruct(bias.shape, bias.dtype))
  return tuple(jax.ffi.ffi_call("NativeGroupNormBwd", out)(
      x, scale, bias, mean, rstd, dy, groups=np.int64(groups), act=np.int64(ACTS[act])))


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)
