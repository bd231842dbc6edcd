// Fused element-wise layers for CPU: each reads its input once and writes once,
// where the torch versions take three to six passes over memory. Arithmetic is
// float32; results are rounded to the tensor's dtype at the same points the
// reference (HF transformers) rounds, so bf16 outputs match it closely.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "dispatch.h"
#include "vec.h"

namespace {

constexpr int64_t kRowGrain = 32;  // small batches run on one thread: no fork/join

template <typename T>
inline float rounded(float x) {
  return float(T(x));
}

using kvscope_vec::Vec;

// Sums of squares of rows [0, R) of x (row stride `size`), each row's added one element
// after another as a plain loop over the row adds them (the bits every earlier version
// of this kernel gave); R rows at once keep R independent chains of adds in flight.
template <int R, typename scalar_t>
inline void sums_of_squares(const scalar_t* x, int64_t size, float* sums) {
  float acc[R] = {};
  for (int64_t i = 0; i < size; ++i)
    for (int r = 0; r < R; ++r) acc[r] += float(x[r * size + i]) * float(x[r * size + i]);
  for (int r = 0; r < R; ++r) sums[r] = acc[r];
}

// Scale one row by 1/rms and the weight, rounding where the reference does; element-wise,
// a vector at a time (the bits of one element at a time).
template <typename scalar_t>
inline void normalize_row(const scalar_t* x, const scalar_t* weight, scalar_t* out, int64_t size,
                          float sum, float eps) {
  constexpr int L = Vec::kLanes;
  const float inv = 1.f / std::sqrt(sum / float(size) + eps);
  const Vec vinv = Vec::set1(inv);
  int64_t i = 0;
  for (; i + L <= size; i += L)
    (Vec::load(weight + i) * kvscope_vec::round_as<scalar_t>(Vec::load(x + i) * vinv))
        .store(out + i);
  for (; i < size; ++i)
    out[i] = scalar_t(float(weight[i]) * rounded<scalar_t>(float(x[i]) * inv));
}

// RMSNorm of rows [begin, end) of x [rows, size] into out
template <typename scalar_t>
void rms_norm_rows(const scalar_t* x, const scalar_t* weight, scalar_t* out, int64_t size,
                   float eps, int64_t begin, int64_t end) {
  constexpr int kRows = 8;
  float sums[kRows];
  for (int64_t r0 = begin; r0 < end; r0 += kRows) {
    const int64_t n = std::min<int64_t>(kRows, end - r0);
    if (n == kRows) {
      sums_of_squares<kRows>(x + r0 * size, size, sums);
    } else {
      for (int64_t r = 0; r < n; ++r) sums_of_squares<1>(x + (r0 + r) * size, size, sums + r);
    }
    for (int64_t r = 0; r < n; ++r)
      normalize_row(x + (r0 + r) * size, weight, out + (r0 + r) * size, size, sums[r], eps);
  }
}

// row += x, element-wise, rounded to the dtype
template <typename scalar_t>
inline void add_row(scalar_t* row, const scalar_t* x, int64_t size) {
  constexpr int L = Vec::kLanes;
  int64_t i = 0;
  for (; i + L <= size; i += L) (Vec::load(row + i) + Vec::load(x + i)).store(row + i);
  for (; i < size; ++i) row[i] = scalar_t(float(row[i]) + float(x[i]));
}

// One head in place: x*cos + rotate_half(x)*sin over half-split pairs, each product
// rounded to the dtype as the reference rounds it. bf16 heads run a vector at a time:
// element-wise, the bits of the plain loop below (a - b is a + (-b), rounding is
// symmetric, and the rounding between multiply and add leaves nothing to fuse). float32
// heads keep the plain loop, which the compiler vectorises itself.
template <typename scalar_t>
inline void rope_head(scalar_t* x, const scalar_t* c, const scalar_t* s, int64_t half) {
  constexpr int L = Vec::kLanes;
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    using kvscope_vec::round_as;
    for (; half % L == 0 && i < half; i += L) {
      const Vec a = Vec::load(x + i), b = Vec::load(x + i + half);
      const Vec lo = round_as<scalar_t>(a * Vec::load(c + i)) -
                     round_as<scalar_t>(b * Vec::load(s + i));
      const Vec hi = round_as<scalar_t>(b * Vec::load(c + i + half)) +
                     round_as<scalar_t>(a * Vec::load(s + i + half));
      lo.store(x + i);
      hi.store(x + i + half);
    }
  }
  for (; i < half; ++i) {
    const float a = float(x[i]), b = float(x[i + half]);
    const float lo = rounded<scalar_t>(a * float(c[i])) + rounded<scalar_t>(-b * float(s[i]));
    const float hi = rounded<scalar_t>(b * float(c[i + half])) +
                     rounded<scalar_t>(a * float(s[i + half]));
    x[i] = scalar_t(lo);
    x[i + half] = scalar_t(hi);
  }
}

}  // namespace

// out = weight * normalize(x), x [rows, size]
at::Tensor rms_norm(at::Tensor x, at::Tensor weight, double eps) {
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "rms_norm needs contiguous tensors");
  auto out = at::empty_like(x);
  KVSCOPE_DISPATCH(x.scalar_type(), "rms_norm", [&] {
    const int64_t size = x.size(-1), rows = x.numel() / size;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = weight.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
      rms_norm_rows(xp, wp, op, size, float(eps), begin, end);
    });
  });
  return out;
}

// residual += x (in place), returns weight * normalize(residual); one pass per row
at::Tensor add_rms_norm(at::Tensor x, at::Tensor residual, at::Tensor weight, double eps) {
  TORCH_CHECK(x.is_contiguous() && residual.is_contiguous(), "add_rms_norm needs contiguous");
  auto out = at::empty_like(x);
  KVSCOPE_DISPATCH(x.scalar_type(), "add_rms", [&] {
    const int64_t size = x.size(-1), rows = x.numel() / size;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = weight.data_ptr<scalar_t>();
    scalar_t* rp = residual.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) add_row(rp + r * size, xp + r * size, size);
      rms_norm_rows(static_cast<const scalar_t*>(rp), wp, op, size, float(eps), begin, end);
    });
  });
  return out;
}

// gate_up [rows, 2 * inter] → silu(gate) * up [rows, inter]
at::Tensor silu_and_mul(at::Tensor gate_up) {
  TORCH_CHECK(gate_up.is_contiguous(), "silu_and_mul needs a contiguous input");
  const int64_t inter = gate_up.size(-1) / 2, rows = gate_up.numel() / gate_up.size(-1);
  auto out = at::empty({rows, inter}, gate_up.options());
  KVSCOPE_DISPATCH(gate_up.scalar_type(), "silu", [&] {
    const scalar_t* in = gate_up.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* g = in + r * 2 * inter;
        const scalar_t* u = g + inter;
        scalar_t* dst = o + r * inter;
        int64_t i = 0;
        const Vec one = Vec::set1(1.f);
        for (; i + Vec::kLanes <= inter; i += Vec::kLanes) {
          const Vec gv = Vec::load(g + i);
          const Vec denom = one + kvscope_vec::exp(Vec::zero() - gv);
          const Vec act = kvscope_vec::round_as<scalar_t>(gv / denom);
          (act * Vec::load(u + i)).store(dst + i);
        }
        for (; i < inter; ++i) {
          const float gv = float(g[i]);
          const float act = rounded<scalar_t>(gv / (1.f + std::exp(-gv)));
          dst[i] = scalar_t(act * float(u[i]));
        }
      }
    });
  });
  return out;
}

// In place: rotate the first `heads` heads of each row of qkv [rows, width] (q then k,
// laid out head after head) by RoPE with cos/sin [rows, head_dim], half-split pairs.
void rope_inplace(at::Tensor qkv, at::Tensor cos, at::Tensor sin, int64_t heads,
                  int64_t head_dim) {
  TORCH_CHECK(qkv.stride(-1) == 1 && cos.is_contiguous() && sin.is_contiguous(),
              "rope needs unit-stride rows and contiguous tables");
  const int64_t rows = qkv.size(0), row_stride = qkv.stride(0), half = head_dim / 2;
  KVSCOPE_DISPATCH(qkv.scalar_type(), "rope", [&] {
    scalar_t* base = qkv.data_ptr<scalar_t>();
    const scalar_t* c = cos.data_ptr<scalar_t>();
    const scalar_t* s = sin.data_ptr<scalar_t>();
    at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* cr = c + r * head_dim;
        const scalar_t* sr = s + r * head_dim;
        for (int64_t h = 0; h < heads; ++h)
          rope_head(base + r * row_stride + h * head_dim, cr, sr, half);
      }
    });
  });
}
