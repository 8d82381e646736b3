"""2-D convolutions on the CPU through oneDNN (XLA FFI custom calls), for the train step.

XLA:CPU computes a conv's kernel gradient as a whole-image-window convolution over transposed activations;
oneDNN (the library PyTorch uses on CPUs) has direct AVX-512 kernels for the forward pass and both
gradients. `conv2d(x, w, strides, padding)` is `lax.conv_general_dilated` for NHWC activations and HWIO
kernels, with a custom VJP whose forward and backward passes are one custom call each
(`onednn_conv.cc`). It is reverse-mode only (forward-mode `jvp` is not defined), so only the train step's
loss uses it: `fused.conv_general_dilated`, in the `Ops` that `ops.resolve(training.conv_impl)` returns for
'onednn', and for 'auto' on a single-device, single-process CPU run (a custom call has no sharding rule, so
across several devices XLA's own conv is the one that splits).

The C++ sources (this file's and `native_norm.cc`'s GroupNorm, next to this file) are compiled into one
library on first use (about 5 s, g++ with OpenMP) against the installed `onednn-cpu-gomp` and
`onednn-devel-cpu-gomp` wheels (setup.py's "cpu" extra) and jaxlib's FFI headers, and cached under
`files.cache_dir()/native/`, keyed by the sources, flags, jax and oneDNN versions.
"""
import ctypes
import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import numpy as np

from score_sde import files
from score_sde.models import ops

# One shared library: these convolutions and native_norm.cc's GroupNorm (+ SiLU), which share a lock.
SOURCES = tuple(os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
                for name in ("onednn_conv.cc", "native_norm.cc"))
TARGETS = ("OnednnConvFwd", "OnednnConvBwd", "NativeGroupNormFwd", "NativeGroupNormBwd")
ONEDNN_WHEELS = ops.CPU_EXTRA  # ("onednn-cpu-gomp", "onednn-devel-cpu-gomp"), setup.py's "cpu" extra
CXXFLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp")


def platform_supported():
  """oneDNN's CPU wheels exist for Linux x86-64 only."""
  return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


def _wheel_file(distribution, suffix):
  """Absolute path of the file ending in `suffix` that pip installed for `distribution`."""
  try:
    found = [f for f in importlib.metadata.files(distribution) or () if f"/{f}".endswith(suffix)]
  except importlib.metadata.PackageNotFoundError:
    found = []
  if not found:
    raise RuntimeError(f"training.conv_impl='onednn' needs the {distribution!r} wheel: pip install -e '.[cpu]' "
                       f"or pip install {' '.join(ONEDNN_WHEELS)} (or set training.conv_impl='xla').")
  return os.path.realpath(found[0].locate())


def _build(path):
  """Compiles SOURCES into the shared library `path` (atomically: a temp file, then rename)."""
  compiler = shutil.which(os.environ.get("CXX") or "g++") or (None if os.environ.get("CXX") else shutil.which("c++"))
  if not compiler:
    raise RuntimeError("training.conv_impl='onednn' compiles a small C++ file on first use and found no "
                       "C++ compiler: install g++ (or set CXX), or set training.conv_impl='xla'.")
  header = _wheel_file("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp")
  include_dir = os.path.dirname(os.path.dirname(os.path.dirname(header)))
  lib_dir = os.path.dirname(_wheel_file("onednn-cpu-gomp", "/libdnnl.so.3"))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
    out = os.path.join(tmp, os.path.basename(path))
    cmd = [compiler, *CXXFLAGS, f"-I{jax.ffi.include_dir()}", f"-I{include_dir}", *SOURCES, f"-L{lib_dir}",
           "-l:libdnnl.so.3", f"-Wl,-rpath,{lib_dir}", "-o", out]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f"Building {' '.join(SOURCES)} failed ({' '.join(cmd)}):\n{result.stderr[-4000:]}")
    os.replace(out, path)  # concurrent builders (pytest workers) each rename a complete file


def _file_sha256(path):
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _write_stamp(path, key):
  """Records, beside the built library, the key it was built for and the digest of its bytes."""
  stamp = path + ".stamp"
  with open(stamp + ".tmp", "w") as f:
    f.write(f"{key} {_file_sha256(path)}\n")
  os.replace(stamp + ".tmp", stamp)


def _cached_build_matches(path, key):
  """Whether the cached library at `path` is the complete build of `key`: its stamp names `key` and the
  digest of the file's bytes (a truncated, overwritten or foreign file under the right name is rebuilt)."""
  try:
    with open(path + ".stamp") as f:
      stamped_key, stamped_digest = f.read().split()
    return stamped_key == key and stamped_digest == _file_sha256(path)
  except (OSError, ValueError):
    return False


@functools.cache
def library():
  """The built and loaded FFI library, its handlers registered with XLA:CPU (once per process)."""
  if not platform_supported():
    raise RuntimeError(f"training.conv_impl='onednn' needs Linux x86-64 (oneDNN's CPU wheels); this is "
                       f"{platform.system()} {platform.machine()}: set training.conv_impl='xla'.")
  key = hashlib.sha256(" ".join(CXXFLAGS).encode())
  for source in SOURCES:
    with open(source, "rb") as f:
      key.update(f.read())
  for name in ("jax", "jaxlib", *ONEDNN_WHEELS):
    try:
      key.update(f"{name}={importlib.metadata.version(name)};".encode())
    except importlib.metadata.PackageNotFoundError:
      pass  # a missing oneDNN wheel is reported by `_build` with what to install
  path = os.path.join(files.cache_dir(), "native", f"score_sde_native-{key.hexdigest()[:16]}.so")
  if not _cached_build_matches(path, key.hexdigest()):
    _build(path)
    _write_stamp(path, key.hexdigest())
  lib = ctypes.cdll.LoadLibrary(path)
  for target in TARGETS:
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, target)), platform="cpu")
  return lib


def _attributes(strides, padding):
  (pad_top, pad_bottom), (pad_left, pad_right) = padding
  return dict(stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]), pad_top=np.int64(pad_top),
              pad_bottom=np.int64(pad_bottom), pad_left=np.int64(pad_left), pad_right=np.int64(pad_right))


def output_shape(x_shape, w_shape, strides, padding):
  (n, h, w, _), (kh, kw, _, o) = x_shape, w_shape
  (pt, pb), (pl, pr) = padding
  return n, (h + pt + pb - kh) // strides[0] + 1, (w + pl + pr - kw) // strides[1] + 1, o


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, w, strides, padding):
  """`lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))` in
  float32, one group, no dilation; `strides` = (sh, sw), `padding` = ((top, bottom), (left, right))."""
  library()
  out = jax.ShapeDtypeStruct(output_shape(x.shape, w.shape, strides, padding), x.dtype)
  return jax.ffi.ffi_call("OnednnConvFwd", out)(x, w, **_attributes(strides, padding))


def _conv2d_fwd(x, w, strides, padding):
  return conv2d(x, w, strides, padding), (x, w)


def _conv2d_bwd(strides, padding, residuals, dy):
  x, w = residuals
  out = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(w.shape, w.dtype))
  return tuple(jax.ffi.ffi_call("OnednnConvBwd", out)(x, w, dy, **_attributes(strides, padding)))


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def kernels(x_shape, w_shape, strides, padding):
  """oneDNN's implementation names for the (forward, input-gradient, kernel-gradient) passes."""
  lib = library()
  (pt, pb), (pl, pr) = padding
  key = (ctypes.c_int64 * 13)(*x_shape, w_shape[0], w_shape[1], w_shape[3], *strides, pt, pb, pl, pr)
  names = []
  for kind in range(3):
    buf = ctypes.create_string_buffer(256)
    if lib.OnednnConvImplInfo(kind, key, buf, 256) != 0:
      raise RuntimeError(f"oneDNN has no convolution for {x_shape} * {w_shape}: {buf.value.decode()}")
    names.append(buf.value.decode())
  return tuple(names)
