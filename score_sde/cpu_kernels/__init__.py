"""Native CPU kernels for the train step, behind the one seam `score_sde.models.ops`.

What is here: 2-D convolutions and both their gradients in oneDNN (`onednn_conv.py` + `.cc`), GroupNorm
followed by SiLU (or nothing) as one call per pass, into which the residual blocks also fold the preceding conv
bias, the time-embedding projection and the following dropout (`native_norm.py` + `.cc`), all XLA FFI custom
calls compiled with g++ on first use and cached; and a Dropout that draws nn.Dropout's masks bit for bit with
the threefry hash unrolled (`dropout.py`, pure JAX). `fused.py` puts them together as one `ops.Ops`.

The core never imports this package: `ops.resolve(training.conv_impl, devices)` imports it, lazily, only
when it returns these ops ('onednn', or 'auto' on a single-device, single-process CPU run). It needs setup.py's
"cpu" extra (`pip install -e '.[cpu]'`: the oneDNN wheels, Linux x86-64 only) and a C++ compiler.
"""
import os
import shutil

from score_sde.models import ops as _ops


def unavailable_reason():
  """Why these kernels cannot run here (a phrase), or None when they can."""
  missing = _ops.cpu_extra_missing()
  if missing:
    return f"the 'cpu' extra (pip install -e '.[cpu]') is not usable: {missing}"
  cxx = os.environ.get("CXX")
  if not (shutil.which(cxx or "g++") or (not cxx and shutil.which("c++"))):
    return "no C++ compiler (install g++ or set CXX)"
  return None


def available():
  """True when the kernels can be built and run on this machine."""
  return unavailable_reason() is None


def get_ops():
  """The `ops.Ops` computing with these kernels (`fused.OPS`)."""
  from score_sde.cpu_kernels import fused  # pylint: disable=g-import-not-at-top
  return fused.OPS
