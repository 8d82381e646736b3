"""How the networks compute: one `Ops` value, given to every model and block as its `ops` field.

A network's parameters depend on its architecture only; its `ops` picks the functions that compute the convs,
GroupNorm (+ activation), the residual blocks' conv -> + time embedding -> GroupNorm -> act -> dropout, and
dropout. Every `Ops` creates the same submodules under the same names, with the same initialisers, and
computes the same math, so one parameter tree serves every `Ops`.

`XLA` is pure JAX/Flax: models built by `mutils.create_model` use it, and so do evaluation, sampling and
likelihoods. The train step computes its loss with `model.clone(ops=resolve(training.conv_impl, devices))`.
"""
import dataclasses
import importlib
import importlib.metadata
import platform
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ("auto", "xla", "onednn")
# The distributions of setup.py's "cpu" extra (Linux x86-64 only) and the package that uses them.
CPU_EXTRA = ("onednn-cpu-gomp", "onednn-devel-cpu-gomp")
_CPU_EXTRA_PACKAGE = "score_sde.cpu_kernels"


@dataclasses.dataclass(frozen=True)
class Ops:
  """How a network computes; every field keeps the parameters, names and math of `XLA`'s.

  name: what `training.conv_impl` resolved to ('xla', ...), for logs.
  conv_general_dilated: `lax.conv_general_dilated` as `nn.Conv` calls it; given to every `nn.Conv` the
    helpers in `layers` make.
  group_norm_act: `(x, num_groups, act=None, epsilon=1e-6) -> act(GroupNorm(x))` (act None: none); creates
    one `GroupNorm_k` in the caller's scope.
  conv_temb_norm: `(h, temb, act, out_ch, num_groups, dropout=None, train=True)` ->
    dropout(act(GroupNorm(conv3x3(h) + Dense(act(temb))))); creates `Conv_k`, `Dense_k` (when temb is given)
    and `GroupNorm_k` in the caller's scope, in that order; `dropout` is a `dropout` module or None.
  dropout: a Dropout module class with `nn.Dropout`'s fields, class name (so instances are auto-named
    `Dropout_k`), rng stream and masks.
  """
  name: str
  conv_general_dilated: Callable
  group_norm_act: Callable
  conv_temb_norm: Callable
  dropout: type


def is_plain_nhwc_conv(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count):
  """A 2-D NHWC x HWIO conv with one group and no dilation."""
  return (lhs.ndim == 4 and feature_group_count == 1
          and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
          and tuple(dimension_numbers) == tuple(lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                                                            ("NHWC", "HWIO", "NHWC"))))


def xla_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                             dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated`, with 1x1 stride-1 NHWC convs as a per-pixel matmul on (N*H*W, C): the same
  math, whose backward pass is two plain matmuls."""
  is_1x1 = (is_plain_nhwc_conv(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count)
            and tuple(rhs.shape[:2]) == (1, 1) and tuple(window_strides) == (1, 1)
            and (padding in ("SAME", "VALID") or all(tuple(p) == (0, 0) for p in padding)))
  if is_1x1:
    c, o = rhs.shape[2:]
    return jnp.dot(lhs.reshape(-1, c), rhs.reshape(c, o), precision=precision).reshape(lhs.shape[:-1] + (o,))
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count, precision=precision)


def xla_group_norm_act(x, num_groups, act=None, epsilon=1e-6):
  """act(nn.GroupNorm(num_groups, epsilon)(x)); act None: no activation."""
  y = nn.GroupNorm(num_groups=num_groups, epsilon=epsilon)(x)
  return y if act is None else act(y)


# The DDPM initialisation of the residual blocks' 3x3 conv and time-embedding projection (layers.default_init()).
_DDPM_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def unfused_conv_temb_norm(h, temb, act, out_ch, num_groups, dropout=None, train=True, *, conv_general_dilated,
                           group_norm_act):
  """`Ops.conv_temb_norm` one layer at a time, its conv and GroupNorm computed by the given functions."""
  h = nn.Conv(out_ch, kernel_size=(3, 3), padding="SAME", kernel_init=_DDPM_INIT, bias_init=nn.initializers.zeros,
              conv_general_dilated=conv_general_dilated)(h)
  if temb is not None:  # a per-channel bias from the time embedding
    h = h + nn.Dense(out_ch, kernel_init=_DDPM_INIT)(act(temb))[:, None, None, :]
  h = group_norm_act(h, num_groups, act)
  return h if dropout is None else dropout(h, deterministic=not train)


def _xla_conv_temb_norm(h, temb, act, out_ch, num_groups, dropout=None, train=True):
  return unfused_conv_temb_norm(h, temb, act, out_ch, num_groups, dropout, train,
                                conv_general_dilated=xla_conv_general_dilated, group_norm_act=xla_group_norm_act)


XLA = Ops(name="xla", conv_general_dilated=xla_conv_general_dilated, group_norm_act=xla_group_norm_act,
          conv_temb_norm=_xla_conv_temb_norm, dropout=nn.Dropout)


# ----------------------------------------------------------------------------------------- training.conv_impl
def check_impl(name):
  """Refuses a `training.conv_impl` that is not one of IMPLS."""
  if name not in IMPLS:
    raise ValueError(f"training.conv_impl={name!r} is not one of {list(IMPLS)}.")


def cpu_extra_missing():
  """Why setup.py's "cpu" extra cannot be used on this machine (a phrase), or None when it can."""
  if not (platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")):
    return f"it exists for Linux x86-64 only; this is {platform.system()} {platform.machine()}"
  missing = []
  for distribution in CPU_EXTRA:
    try:
      importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
      missing.append(distribution)
  return f"{', '.join(missing)} not installed" if missing else None


def resolve(conv_impl, devices=None):
  """The `Ops` a train step on `devices` (default: all of them) computes with for `training.conv_impl`.

  'xla': `XLA`. 'onednn': the "cpu" extra's implementation (an error when it cannot be used here). 'auto':
  that implementation for a single-device, single-process CPU run when the extra is installed, else `XLA`.
  """
  check_impl(conv_impl)
  if conv_impl == "xla":
    return XLA
  missing = cpu_extra_missing()
  if conv_impl == "onednn" and missing:
    raise RuntimeError(f"training.conv_impl='onednn' needs the 'cpu' extra ({missing}): "
                       "pip install -e '.[cpu]' (or set training.conv_impl='xla').")
  if conv_impl == "auto":
    devices = jax.devices() if devices is None else list(devices)
    single_cpu = len(devices) == 1 and devices[0].platform == "cpu" and jax.process_count() == 1
    if missing or not single_cpu:
      return XLA
  return importlib.import_module(_CPU_EXTRA_PACKAGE).get_ops()


def with_ops(model, model_ops):
  """`model` computing with `model_ops` (a clone; the parameters are the same), or `model` itself when it has
  no `ops` field (NCSN and NCSNv2 compute one way)."""
  return model.clone(ops=model_ops) if "ops" in model.__dataclass_fields__ else model
