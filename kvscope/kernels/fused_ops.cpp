// Fused element-wise layers for CPU: each reads its input once and writes once,
// where the torch versions take three to six passes over memory. Arithmetic is
// float32; results are rounded to the tensor's dtype at the same points the
// reference (HF transformers) rounds, so bf16 outputs match it closely.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "dispatch.h"
#include "vec.h"

namespace {

constexpr int64_t kRowGrain = 32;  // small batches run on one thread: no fork/join

template <typename T>
inline float rounded(float x) {
  return float(T(x));
}

// Normalise one row in float32 and scale by the weight, rounding where the reference does.
template <typename scalar_t>
inline void rms_norm_row(const scalar_t* x, const scalar_t* weight, scalar_t* out, int64_t size,
                         float eps) {
  float sum = 0.f;
  for (int64_t i = 0; i < size; ++i) sum += float(x[i]) * float(x[i]);
  const float inv = 1.f / std::sqrt(sum / float(size) + eps);
  for (int64_t i = 0; i < size; ++i)
    out[i] = scalar_t(float(weight[i]) * rounded<scalar_t>(float(x[i]) * inv));
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
      for (int64_t r = begin; r < end; ++r)
        rms_norm_row(xp + r * size, wp, op + r * size, size, float(eps));
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
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* row = rp + r * size;
        for (int64_t i = 0; i < size; ++i) row[i] = scalar_t(float(row[i]) + float(xp[r * size + i]));
        rms_norm_row(row, wp, op + r * size, size, float(eps));
      }
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
        using kvscope_vec::Vec;
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
        for (int64_t h = 0; h < heads; ++h) {
          scalar_t* x = base + r * row_stride + h * head_dim;
          for (int64_t i = 0; i < half; ++i) {
            const float a = float(x[i]), b = float(x[i + half]);
            // x*cos + rotate_half(x)*sin, rounding each product as the reference does
            const float lo = rounded<scalar_t>(a * float(cr[i])) +
                             rounded<scalar_t>(-b * float(sr[i]));
            const float hi = rounded<scalar_t>(b * float(cr[i + half])) +
                             rounded<scalar_t>(a * float(sr[i + half]));
            x[i] = scalar_t(lo);
            x[i + half] = scalar_t(hi);
          }
        }
      }
    });
  });
}
