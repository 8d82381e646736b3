// GroupNorm followed by an optional SiLU, forward and backward, for XLA:CPU as FFI custom calls.
//
// Why: XLA:CPU runs a GroupNorm + SiLU as 5-8 separate thunks (statistics reductions, normalisation,
// activation; in the backward pass as many again), each a pass over memory plus ~10 us of fixed cost. In the
// small DDPM++ train step that was ~38 ms of a ~115 ms step; here the forward pass is two sweeps over x
// (statistics, then normalise + activate) and the backward pass two sweeps (per-channel sums, then dx).
//
//   u = x + shift[n, c]   (optional: a conv's bias plus a time-embedding projection, folded in here)
//   y = act(scale[c] * (u - mean[n, g]) * rstd[n, g] + bias[c]),  g = c / (C / G),  act = identity | silu
//   y = keep ? y / keep_prob : 0      (optional: the dropout that follows, with the mask drawn by JAX)
//   mean, var of u over (H, W, channels of g), biased var; rstd = 1 / sqrt(var + eps)   (flax.linen.GroupNorm)
//
// Handlers (x is [N, ..., C] row-major, i.e. NHWC; statistics are [N, G]; shift is [N, C] and keep (bool) is
// x's shape, each empty for none):
//   NativeGroupNormFwd (x, shift, keep, scale[C], bias[C])               -> (y, mean, rstd)
//   NativeGroupNormBwd (x, shift, keep, scale, bias, mean, rstd, dy)     -> (dx, dshift, dscale[C], dbias[C])
// Attributes: groups (int64), act (int64: 0 identity, 1 silu), keep_prob (float32); forward also eps.
//
// Sums are accumulated in double, per sample, and the per-sample parameter gradients are added in sample
// order, so results do not depend on the number of threads. Work is split over samples with OpenMP (the
// runtime oneDNN uses) and, like the oneDNN convolutions, calls are serialised (native_exec_mutex).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

std::mutex& native_exec_mutex();  // onednn_conv.cc

namespace {

enum Act : int64_t { kIdentity = 0, kSilu = 1 };

// exp(x) for x <= 0 (the sigmoid's exp(-|z|)), vectorisable: 2^k * p(r), |r| <= ln2 / 2, with a degree-6
// polynomial (relative error ~2e-7, about libm's float expf).
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  // Round to nearest by adding and subtracting 1.5 * 2^23 (exact for |x * log2 e| < 2^22).
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, sizeof(bits));
  bits += static_cast<int32_t>(k) << 23;
  std::memcpy(&p, &bits, sizeof(bits));
  return p;
}

// sigmoid(z) from exp(-|z|), which never overflows.
inline float sigmoid(float z) {
  const float e = exp_nonpositive(z >= 0.0f ? -z : z);
  const float s = 1.0f / (1.0f + e);
  return z >= 0.0f ? s : e * s;
}

struct Layout {
  int64_t n, pixels, channels, groups;
  int64_t group_size() const { return channels / groups; }
  int64_t count() const { return pixels * group_size(); }  // elements per (sample, group)
};

Layout layout(ffi::Buffer<ffi::F32>::Dimensions dims, int64_t groups) {
  int64_t pixels = 1;
  for (size_t i = 1; i + 1 < dims.size(); ++i) pixels *= dims[i];
  return {dims[0], pixels, dims[dims.size() - 1], groups};
}

// Per-channel sum and sum of squares of one sample (pixels x channels), in double.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void channel_moments(const float* x, int64_t pixels, int64_t channels, double* sum, double* sumsq) {
  std::fill(sum, sum + channels, 0.0);
  std::fill(sumsq, sumsq + channels, 0.0);
  for (int64_t p = 0; p < pixels; ++p) {
    const float* row = x + p * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const double v = row[c];
      sum[c] += v;
      sumsq[c] += v * v;
    }
  }
}

// y = act((x - mean_c) * mul_c + bias_c) for one sample, then dropout where `keep` is given.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void normalize(const float* x, int64_t pixels, int64_t channels, const float* mean_c, const float* mul_c,
               const float* bias, int64_t act, const uint8_t* keep, float keep_prob, float* y) {
  for (int64_t p = 0; p < pixels; ++p) {
    const float* row = x + p * channels;
    float* out = y + p * channels;
    if (act == kSilu) {
      for (int64_t c = 0; c < channels; ++c) {
        const float z = (row[c] - mean_c[c]) * mul_c[c] + bias[c];
        out[c] = z * sigmoid(z);
      }
    } else {
      for (int64_t c = 0; c < channels; ++c) out[c] = (row[c] - mean_c[c]) * mul_c[c] + bias[c];
    }
    if (keep != nullptr) {  // as flax's Dropout: select(keep, y / keep_prob, 0)
      const uint8_t* k = keep + p * channels;
      for (int64_t c = 0; c < channels; ++c) out[c] = k[c] != 0 ? out[c] / keep_prob : 0.0f;
    }
  }
}

// Backward, first sweep over one sample: dz = dy' * act'(z) (stored in dx), dy' = dy through the dropout, and
// per-channel sums of dz and dz * xhat.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void backward_sums(const float* x, const float* dy, int64_t pixels, int64_t channels, const float* mean_c,
                   const float* rstd_c, const float* scale, const float* bias, int64_t act, const uint8_t* keep,
                   float keep_prob, float* dz, double* sum_dz, double* sum_dz_xhat) {
  std::fill(sum_dz, sum_dz + channels, 0.0);
  std::fill(sum_dz_xhat, sum_dz_xhat + channels, 0.0);
  for (int64_t p = 0; p < pixels; ++p) {
    const float* xr = x + p * channels;
    const float* dyr = dy + p * channels;
    float* dzr = dz + p * channels;
    if (keep != nullptr) {  // through the dropout first (its own loop: mixing byte masks into the loop below
                            // keeps GCC from vectorising it)
      const uint8_t* k = keep + p * channels;
      for (int64_t c = 0; c < channels; ++c) dzr[c] = k[c] != 0 ? dyr[c] / keep_prob : 0.0f;
      dyr = dzr;
    }
    for (int64_t c = 0; c < channels; ++c) {
      const float xhat = (xr[c] - mean_c[c]) * rstd_c[c];
      float d = dyr[c];
      if (act == kSilu) {
        const float z = xhat * scale[c] + bias[c];
        const float s = sigmoid(z);
        d *= s * (1.0f + z * (1.0f - s));
      }
      dzr[c] = d;
      sum_dz[c] += d;
      sum_dz_xhat[c] += static_cast<double>(d) * xhat;
    }
  }
}

// Backward, second sweep: dx = rstd * (scale * dz - mean_g(scale * dz) - xhat * mean_g(scale * dz * xhat)),
// and its per-channel sums (the gradient of the shift).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void backward_dx(const float* x, int64_t pixels, int64_t channels, const float* mean_c, const float* rstd_c,
                 const float* scale, const float* a_c, const float* b_c, float* dx, double* sum_dx) {
  std::fill(sum_dx, sum_dx + channels, 0.0);
  for (int64_t p = 0; p < pixels; ++p) {
    const float* xr = x + p * channels;
    float* dxr = dx + p * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const float xhat = (xr[c] - mean_c[c]) * rstd_c[c];
      const float d = rstd_c[c] * (scale[c] * dxr[c] - a_c[c] - xhat * b_c[c]);
      dxr[c] = d;
      sum_dx[c] += d;
    }
  }
}

// The checks both passes make on their shared inputs (shift and mask may be empty: none).
ffi::Error check(const Layout& l, int64_t scale_size, int64_t shift_size, int64_t keep_size) {
  if (l.groups <= 0 || l.channels % l.groups != 0 || scale_size != l.channels) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "GroupNorm: channels must divide into groups and match scale/bias");
  }
  if (shift_size != 0 && shift_size != l.n * l.channels) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "GroupNorm: shift must be [N, C] or empty");
  }
  if (keep_size != 0 && keep_size != l.n * l.pixels * l.channels) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "GroupNorm: the dropout mask must be x's shape or empty");
  }
  return ffi::Error::Success();
}

// The dropout mask as bytes (vectorisable where bool is not), or nullptr for none.
const uint8_t* mask_bytes(ffi::Buffer<ffi::PRED> keep) {
  return keep.element_count() != 0 ? reinterpret_cast<const uint8_t*>(keep.typed_data()) : nullptr;
}

ffi::Error group_norm_fwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> shift, ffi::Buffer<ffi::PRED> keep,
                          ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                          ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> rstd, int64_t groups,
                          float eps, int64_t act, float keep_prob) {
  const Layout l = layout(x.dimensions(), groups);
  if (ffi::Error e = check(l, scale.element_count(), shift.element_count(), keep.element_count()); e.failure()) {
    return e;
  }
  const uint8_t* keeps = mask_bytes(keep);
  const int64_t cg = l.group_size();
  const bool has_shift = shift.element_count() != 0;
  const float *xs = x.typed_data(), *shs = shift.typed_data(), *sc = scale.typed_data(), *bi = bias.typed_data();
  float *ys = y->typed_data(), *ms = mean->typed_data(), *rs = rstd->typed_data();
  std::lock_guard<std::mutex> lock(native_exec_mutex());
#pragma omp parallel
  {
    std::vector<double> sum(l.channels), sumsq(l.channels), shift_c(l.channels, 0.0);
    std::vector<float> mean_c(l.channels), mul_c(l.channels);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < l.n; ++n) {
      const float* xn = xs + n * l.pixels * l.channels;
      channel_moments(xn, l.pixels, l.channels, sum.data(), sumsq.data());
      if (has_shift) {  // moments of x + s from those of x, exactly in double
        for (int64_t c = 0; c < l.channels; ++c) {
          const double s = shift_c[c] = shs[n * l.channels + c];
          sumsq[c] += 2.0 * s * sum[c] + l.pixels * s * s;
          sum[c] += l.pixels * s;
        }
      }
      for (int64_t g = 0; g < l.groups; ++g) {
        double s = 0.0, s2 = 0.0;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) s += sum[c], s2 += sumsq[c];
        const double m = s / l.count();
        const double var = std::max(s2 / l.count() - m * m, 0.0);
        const float r = static_cast<float>(1.0 / std::sqrt(var + eps));
        ms[n * l.groups + g] = static_cast<float>(m);
        rs[n * l.groups + g] = r;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
          mean_c[c] = static_cast<float>(m - shift_c[c]);  // (x + s) - m = x - (m - s)
          mul_c[c] = r * sc[c];
        }
      }
      const int64_t offset = n * l.pixels * l.channels;
      normalize(xn, l.pixels, l.channels, mean_c.data(), mul_c.data(), bi, act,
                keeps != nullptr ? keeps + offset : nullptr, keep_prob, ys + offset);
    }
  }
  return ffi::Error::Success();
}

ffi::Error group_norm_bwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> shift, ffi::Buffer<ffi::PRED> keep,
                          ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> mean,
                          ffi::Buffer<ffi::F32> rstd, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx,
                          ffi::ResultBuffer<ffi::F32> dshift, ffi::ResultBuffer<ffi::F32> dscale,
                          ffi::ResultBuffer<ffi::F32> dbias, int64_t groups, int64_t act, float keep_prob) {
  const Layout l = layout(x.dimensions(), groups);
  if (ffi::Error e = check(l, scale.element_count(), shift.element_count(), keep.element_count()); e.failure()) {
    return e;
  }
  const uint8_t* keeps = mask_bytes(keep);
  const int64_t cg = l.group_size();
  const bool has_shift = shift.element_count() != 0;
  const float *xs = x.typed_data(), *shs = shift.typed_data(), *sc = scale.typed_data(), *bi = bias.typed_data();
  const float *ms = mean.typed_data(), *rs = rstd.typed_data(), *dys = dy.typed_data();
  float *dxs = dx->typed_data(), *dshs = dshift->typed_data();
  // Per-sample parameter gradients, summed in sample order below (thread-count independent).
  std::vector<double> per_sample_dscale(l.n * l.channels), per_sample_dbias(l.n * l.channels);
  std::lock_guard<std::mutex> lock(native_exec_mutex());
#pragma omp parallel
  {
    std::vector<float> mean_c(l.channels), rstd_c(l.channels), a_c(l.channels), b_c(l.channels);
    std::vector<double> sum_dx(l.channels);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < l.n; ++n) {
      const int64_t offset = n * l.pixels * l.channels;
      for (int64_t c = 0; c < l.channels; ++c) {
        mean_c[c] = static_cast<float>(static_cast<double>(ms[n * l.groups + c / cg]) -
                                       (has_shift ? shs[n * l.channels + c] : 0.0f));
        rstd_c[c] = rs[n * l.groups + c / cg];
      }
      double* sum_dz = per_sample_dbias.data() + n * l.channels;
      double* sum_dz_xhat = per_sample_dscale.data() + n * l.channels;
      backward_sums(xs + offset, dys + offset, l.pixels, l.channels, mean_c.data(), rstd_c.data(), sc, bi, act,
                    keeps != nullptr ? keeps + offset : nullptr, keep_prob, dxs + offset, sum_dz, sum_dz_xhat);
      for (int64_t g = 0; g < l.groups; ++g) {
        double a = 0.0, b = 0.0;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) a += sc[c] * sum_dz[c], b += sc[c] * sum_dz_xhat[c];
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
          a_c[c] = static_cast<float>(a / l.count());
          b_c[c] = static_cast<float>(b / l.count());
        }
      }
      backward_dx(xs + offset, l.pixels, l.channels, mean_c.data(), rstd_c.data(), sc, a_c.data(), b_c.data(),
                  dxs + offset, sum_dx.data());
      if (has_shift) {
        for (int64_t c = 0; c < l.channels; ++c) dshs[n * l.channels + c] = static_cast<float>(sum_dx[c]);
      }
    }
  }
  for (int64_t c = 0; c < l.channels; ++c) {
    double ds = 0.0, db = 0.0;
    for (int64_t n = 0; n < l.n; ++n) {
      ds += per_sample_dscale[n * l.channels + c];
      db += per_sample_dbias[n * l.channels + c];
    }
    dscale->typed_data()[c] = static_cast<float>(ds);
    dbias->typed_data()[c] = static_cast<float>(db);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NativeGroupNormFwd, group_norm_fwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("groups")
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("act")
                                  .Attr<float>("keep_prob"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(NativeGroupNormBwd, group_norm_bwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("groups")
                                  .Attr<int64_t>("act")
                                  .Attr<float>("keep_prob"));
