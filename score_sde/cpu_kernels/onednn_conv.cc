// 2-D convolutions for XLA:CPU through oneDNN, as XLA FFI custom calls.
//
// Why: XLA:CPU lowers a conv's kernel gradient as a "window = whole image" convolution over transposed
// copies of the activations, and its forward/input-gradient convs run Eigen's generic contraction. oneDNN
// has direct AVX-512 kernels for all three passes (the ones PyTorch uses on CPU): on a 2-core AVX-512 VM
// the forward + backward convs of the small DDPM++ train step take ~35 ms in oneDNN against ~84 ms in XLA.
//
// Layouts are the model's own, so no transposes appear in the XLA program: activations NHWC, kernels HWIO
// (flax's). oneDNN chooses its preferred (blocked) weight layout; kernels and kernel gradients are
// reordered to/from HWIO inside the call. Two handlers:
//   OnednnConvFwd (x[N,H,W,C], w[KH,KW,C,O])         -> y[N,Ho,Wo,O]
//   OnednnConvBwd (x, w, dy[N,Ho,Wo,O])              -> (dx[N,H,W,C], dw[KH,KW,C,O])
// The backward pass is one call so that XLA never runs its two halves at the same time (below).
// Attributes: stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right (int64). Dilation 1, one group.
//
// Primitives are built once per (pass, shapes, attributes) and cached. oneDNN runs on its own OpenMP
// threads; calls are serialised, because XLA runs independent thunks concurrently and two OpenMP teams
// on the same cores slow each other down (measured: +10-20% step time). Each call uses a user-managed
// scratchpad, so nothing is shared between calls but the primitive cache.
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

// Serialises every native call (these convolutions and native_norm.cc's GroupNorm), which all run OpenMP
// teams on the same cores.
std::mutex& native_exec_mutex() {
  static std::mutex mutex;
  return mutex;
}
using Tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Everything that fixes a convolution: N, H, W, C, KH, KW, O, strides, paddings.
using ConvKey = std::array<int64_t, 13>;

struct ConvGeometry {
  memory::dims src, weights, dst, strides, pad_l, pad_r;
};

ConvGeometry geometry(const ConvKey& k) {
  const int64_t n = k[0], h = k[1], w = k[2], c = k[3], kh = k[4], kw = k[5], o = k[6];
  const int64_t sh = k[7], sw = k[8], pt = k[9], pb = k[10], pl = k[11], pr = k[12];
  const int64_t ho = (h + pt + pb - kh) / sh + 1, wo = (w + pl + pr - kw) / sw + 1;
  // oneDNN describes tensors by logical dims (N, C, H, W) / (O, I, KH, KW); the tags give the layout.
  return {{n, c, h, w}, {o, c, kh, kw}, {n, o, ho, wo}, {sh, sw}, {pt, pl}, {pb, pr}};
}

memory::desc f32_desc(const memory::dims& dims, Tag tag) {
  return memory::desc(dims, memory::data_type::f32, tag);
}

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// NHWC activations as given; weights in whatever layout oneDNN prefers (`any`).
dnnl::convolution_forward::primitive_desc forward_pd(const ConvGeometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      cpu_engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      f32_desc(g.src, Tag::nhwc), f32_desc(g.weights, Tag::any), f32_desc(g.dst, Tag::nhwc), g.strides,
      g.pad_l, g.pad_r, user_scratchpad());
}

// One cached pass: the conv primitive, its weight layout, and the reorder between that and HWIO.
struct Pass {
  dnnl::primitive conv;
  memory::desc weights;      // the layout the primitive wants for (diff_)weights
  memory::desc hwio;         // flax's layout
  bool needs_reorder = false;
  dnnl::reorder reorder;     // hwio -> weights (fwd, bwd_data) or weights -> hwio (bwd_weights)
  size_t scratchpad_bytes = 0;
  std::string impl;          // oneDNN's implementation name, e.g. "brg_conv_fwd:avx512_core"
};

enum class Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

template <typename Primitive, typename PrimitiveDesc>
void set_conv(Pass& pass, const PrimitiveDesc& pd, const memory::desc& weights) {
  pass.conv = Primitive(pd);
  pass.impl = pd.impl_info_str();
  pass.weights = weights;
  pass.scratchpad_bytes = pd.scratchpad_desc().get_size();
}

Pass make_pass(Kind kind, const ConvKey& key) {
  const ConvGeometry g = geometry(key);
  Pass pass;
  pass.hwio = f32_desc(g.weights, Tag::hwio);
  const auto forward = forward_pd(g);  // the backward passes take it as a hint
  const auto src = f32_desc(g.src, Tag::nhwc), weights = f32_desc(g.weights, Tag::any),
             dst = f32_desc(g.dst, Tag::nhwc);
  if (kind == Kind::kForward) {
    set_conv<dnnl::convolution_forward>(pass, forward, forward.weights_desc());
  } else if (kind == Kind::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(cpu_engine(), dnnl::algorithm::convolution_direct, src,
                                                       weights, dst, g.strides, g.pad_l, g.pad_r, forward,
                                                       user_scratchpad());
    set_conv<dnnl::convolution_backward_data>(pass, pd, pd.weights_desc());
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(cpu_engine(), dnnl::algorithm::convolution_direct,
                                                          src, weights, dst, g.strides, g.pad_l, g.pad_r,
                                                          forward, user_scratchpad());
    set_conv<dnnl::convolution_backward_weights>(pass, pd, pd.diff_weights_desc());
  }
  pass.needs_reorder = pass.weights != pass.hwio;
  if (pass.needs_reorder) {
    pass.reorder = kind == Kind::kBackwardWeights
                       ? dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), pass.weights,
                                                                     cpu_engine(), pass.hwio))
                       : dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), pass.hwio,
                                                                     cpu_engine(), pass.weights));
  }
  return pass;
}

const Pass& cached_pass(Kind kind, const ConvKey& key) {
  static std::mutex mutex;
  static std::map<std::pair<int, ConvKey>, std::unique_ptr<Pass>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[{static_cast<int>(kind), key}];
  if (!slot) slot = std::make_unique<Pass>(make_pass(kind, key));
  return *slot;
}

// Per-thread buffers: the primitive's scratchpad and the weights in oneDNN's layout.
float* thread_buffer(int which, size_t bytes) {
  thread_local std::vector<float> buffers[2];
  auto& buffer = buffers[which];
  if (buffer.size() * sizeof(float) < bytes) buffer.resize(bytes / sizeof(float) + 1);
  return buffer.data();
}

using Dims = ffi::Buffer<ffi::F32>::Dimensions;

ConvKey make_key(Dims x_dims, Dims w_dims, int64_t sh, int64_t sw, int64_t pt,
                 int64_t pb, int64_t pl, int64_t pr) {
  return {x_dims[0], x_dims[1], x_dims[2], x_dims[3], w_dims[0], w_dims[1], w_dims[3],
          sh, sw, pt, pb, pl, pr};
}

ffi::Error run(Kind kind, const ConvKey& key, float* src, float* weights_hwio, float* dst) {
  // One oneDNN call at a time: each calling thread would start its own OpenMP team, and two teams on
  // the same cores (XLA runs independent thunks concurrently) slow both down.
  std::lock_guard<std::mutex> exec_lock(native_exec_mutex());
  try {
    const Pass& pass = cached_pass(kind, key);
    const ConvGeometry g = geometry(key);
    dnnl::stream stream(cpu_engine());
    memory src_mem(f32_desc(g.src, Tag::nhwc), cpu_engine(), src);
    memory dst_mem(f32_desc(g.dst, Tag::nhwc), cpu_engine(), dst);
    memory hwio_mem(pass.hwio, cpu_engine(), weights_hwio);
    memory weights_mem = hwio_mem;
    if (pass.needs_reorder) {
      weights_mem = memory(pass.weights, cpu_engine(), thread_buffer(0, pass.weights.get_size()));
    }
    const int64_t scratch_bytes = std::max<int64_t>(pass.scratchpad_bytes, 1);
    memory scratch(memory::desc({scratch_bytes}, memory::data_type::u8, Tag::x), cpu_engine(),
                   thread_buffer(1, scratch_bytes));
    if (kind == Kind::kForward) {
      if (pass.needs_reorder) pass.reorder.execute(stream, hwio_mem, weights_mem);
      pass.conv.execute(stream, {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, weights_mem},
                                 {DNNL_ARG_DST, dst_mem}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (kind == Kind::kBackwardData) {
      if (pass.needs_reorder) pass.reorder.execute(stream, hwio_mem, weights_mem);
      pass.conv.execute(stream, {{DNNL_ARG_DIFF_SRC, src_mem}, {DNNL_ARG_WEIGHTS, weights_mem},
                                 {DNNL_ARG_DIFF_DST, dst_mem}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      pass.conv.execute(stream, {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_DIFF_WEIGHTS, weights_mem},
                                 {DNNL_ARG_DIFF_DST, dst_mem}, {DNNL_ARG_SCRATCHPAD, scratch}});
      if (pass.needs_reorder) pass.reorder.execute(stream, weights_mem, hwio_mem);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution failed: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error conv_fwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                    int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return run(Kind::kForward, make_key(x.dimensions(), w.dimensions(), sh, sw, pt, pb, pl, pr),
             x.typed_data(), w.typed_data(), y->typed_data());
}

// Both gradients in one call, so XLA never runs them concurrently.
ffi::Error conv_bwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> dy,
                    ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw,
                    int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  const ConvKey key = make_key(x.dimensions(), w.dimensions(), sh, sw, pt, pb, pl, pr);
  ffi::Error error = run(Kind::kBackwardData, key, dx->typed_data(), w.typed_data(), dy.typed_data());
  if (!error.success()) return error;
  return run(Kind::kBackwardWeights, key, x.typed_data(), dw->typed_data(), dy.typed_data());
}

#define CONV_ATTRS                                                                                      \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")                       \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_left").Attr<int64_t>("pad_right")

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvFwd, conv_fwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBwd, conv_bwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CONV_ATTRS);

// Which oneDNN kernels a pass runs (e.g. "brg_conv_fwd:avx512_core"), for benchmarks and tests.
extern "C" int OnednnConvImplInfo(int kind, const int64_t* key, char* out, int out_len) {
  try {
    ConvKey k;
    for (int i = 0; i < 13; ++i) k[i] = key[i];
    const Pass& pass = cached_pass(static_cast<Kind>(kind), k);
    snprintf(out, out_len, "%s", pass.impl.c_str());
    return 0;
  } catch (const dnnl::error& e) {
    snprintf(out, out_len, "%s", e.what());
    return 1;
  }
}
