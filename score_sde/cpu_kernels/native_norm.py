"""GroupNorm followed by SiLU (or nothing) on the CPU as one custom call per pass, for the train step.

`group_norm(x, scale, bias, groups, eps, act)` computes what `act(flax.linen.GroupNorm(groups, eps)(x))`
computes (biased variance, statistics over H, W and the group's channels, per-channel affine), with a
custom VJP whose forward and backward passes are one XLA FFI call each (`native_norm.cc`, built into the
same library as the oneDNN convolutions, see `onednn_conv.library`). XLA:CPU runs the same computation as
5-8 thunks per pass. Reverse mode only, so only the CPU train step's loss calls it (through `fused`).
"""
import functools

import jax
import numpy as np

from score_sde.cpu_kernels import onednn_conv

ACTS = {"none": 0, "silu": 1}


def _check(x, scale, shift, keep, groups, act):
  if act not in ACTS:
    raise ValueError(f"native GroupNorm activation {act!r} is not one of {sorted(ACTS)}.")
  if x.shape[-1] % groups or scale.shape != (x.shape[-1],):
    raise ValueError(f"GroupNorm of {x.shape} into {groups} groups with scale {scale.shape}: the channel count "
                     "must divide into the groups and match scale.")
  if shift is not None and shift.shape != (x.shape[0], x.shape[-1]):
    raise ValueError(f"GroupNorm shift {shift.shape} for input {x.shape}: it must be (N, C).")
  if keep is not None and (keep.shape != x.shape or keep.dtype != bool):
    raise ValueError(f"GroupNorm dropout mask {keep.dtype}{list(keep.shape)} for input {x.shape}: it must be a "
                     "boolean array of the input's shape.")


def group_norm(x, scale, bias, groups, eps, act="none", shift=None, keep=None, keep_prob=1.0):
  """act(GroupNorm(x + shift) * scale + bias), then dropout, for float32 x of shape [N, ..., C].

  act is 'none' or 'silu'. `shift` (N, C) or None is added to x per sample and channel inside the same pass
  (a conv's bias plus a time-embedding projection, see `fused.conv_temb_norm`). `keep` (a boolean mask of
  x's shape, as `dropout.Dropout.keep_mask` draws it) or None applies dropout as flax does:
  where(keep, y / keep_prob, 0).
  """
  _check(x, scale, shift, keep, groups, act)
  onednn_conv.library()
  empty = lambda dtype: np.zeros((0,), dtype)  # "none" to the kernel: no extra pass, no gradient
  shift = empty(np.float32) if shift is None else shift
  keep = empty(bool) if keep is None else keep
  return _group_norm(x, shift, keep, scale, bias, groups, eps, act, float(keep_prob))


def _attributes(groups, act, keep_prob):
  return dict(groups=np.int64(groups), act=np.int64(ACTS[act]), keep_prob=np.float32(keep_prob))


def _forward(x, shift, keep, scale, bias, groups, eps, act, keep_prob):
  stats = jax.ShapeDtypeStruct((x.shape[0], groups), x.dtype)
  return jax.ffi.ffi_call("NativeGroupNormFwd", (jax.ShapeDtypeStruct(x.shape, x.dtype), stats, stats))(
      x, shift, keep, scale, bias, eps=np.float32(eps), **_attributes(groups, act, keep_prob))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _group_norm(x, shift, keep, scale, bias, groups, eps, act, keep_prob):
  return _forward(x, shift, keep, scale, bias, groups, eps, act, keep_prob)[0]


def _group_norm_fwd(x, shift, keep, scale, bias, groups, eps, act, keep_prob):
  y, mean, rstd = _forward(x, shift, keep, scale, bias, groups, eps, act, keep_prob)
  return y, (x, shift, keep, scale, bias, mean, rstd)


def _group_norm_bwd(groups, eps, act, keep_prob, residuals, dy):
  del eps  # the saved rstd already holds it
  x, shift, keep, scale, bias, mean, rstd = residuals
  out = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, shift, scale, bias))
  dx, dshift, dscale, dbias = jax.ffi.ffi_call("NativeGroupNormBwd", out)(
      x, shift, keep, scale, bias, mean, rstd, dy, **_attributes(groups, act, keep_prob))
  return dx, dshift, None, dscale, dbias  # the mask has no gradient


_group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)
