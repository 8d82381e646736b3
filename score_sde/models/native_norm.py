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


def _check(x, scale, shift, groups, act):
  if act not in ACTS:
    raise ValueError(f"native GroupNorm activation {act!r} is not one of {sorted(ACTS)}.")
  if x.shape[-1] % groups or scale.shape != (x.shape[-1],):
    raise ValueError(f"GroupNorm of {x.shape} into {groups} groups with scale {scale.shape}: the channel count "
                     "must divide into the groups and match scale.")
  if shift is not None and shift.shape != (x.shape[0], x.shape[-1]):
    raise ValueError(f"GroupNorm shift {shift.shape} for input {x.shape}: it must be (N, C).")


def group_norm(x, scale, bias, groups, eps, act="none", shift=None):
  """act(GroupNorm(x + shift) * scale + bias) for float32 x of shape [N, ..., C]; act is 'none' or 'silu';
  `shift` (N, C) or None is added to x per sample and channel inside the same pass (a conv's bias plus a
  time-embedding projection, see `layerspp.conv_temb_norm`)."""
  _check(x, scale, shift, groups, act)
  onednn_conv.library()
  if shift is None:  # an empty shift is "none" to the kernel: no extra input pass, no gradient
    shift = np.zeros((0,), np.float32)
  return _group_norm(x, shift, scale, bias, groups, eps, act)


def _forward(x, shift, scale, bias, groups, eps, act):
  stats = jax.ShapeDtypeStruct((x.shape[0], groups), x.dtype)
  return jax.ffi.ffi_call("NativeGroupNormFwd", (jax.ShapeDtypeStruct(x.shape, x.dtype), stats, stats))(
      x, shift, scale, bias, groups=np.int64(groups), eps=np.float32(eps), act=np.int64(ACTS[act]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _group_norm(x, shift, scale, bias, groups, eps, act):
  return _forward(x, shift, scale, bias, groups, eps, act)[0]


def _group_norm_fwd(x, shift, scale, bias, groups, eps, act):
  y, mean, rstd = _forward(x, shift, scale, bias, groups, eps, act)
  return y, (x, shift, scale, bias, mean, rstd)


def _group_norm_bwd(groups, eps, act, residuals, dy):
  del eps  # the saved rstd already holds it
  x, shift, scale, bias, mean, rstd = residuals
  out = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, shift, scale, bias))
  return tuple(jax.ffi.ffi_call("NativeGroupNormBwd", out)(
      x, shift, scale, bias, mean, rstd, dy, groups=np.int64(groups), act=np.int64(ACTS[act])))


_group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)
