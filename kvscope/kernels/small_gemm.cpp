// y = x · Wᵀ (+ bias) for a handful of rows in bfloat16, with AVX512-BF16 dot products.
//
// With one to four rows (batch-1 and small-batch decode) a linear layer is a pass over
// its weights, so its speed is memory bandwidth. The library GEMM reaches about a
// third of this machine's read bandwidth there; this loop streams each weight row
// once, feeds it to every input row, and keeps four output columns in flight.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "simd.h"

#if defined(__AVX512BF16__)
namespace {

constexpr int64_t kColumnGrain = 64;
constexpr int kColumnsAtOnce = 8;

template <int ROWS>
void small_gemm_bf16(const c10::BFloat16* x, const c10::BFloat16* w, const c10::BFloat16* bias,
                     c10::BFloat16* y, int64_t n_out, int64_t k_in) {
  at::parallel_for(0, n_out / kColumnsAtOnce, kColumnGrain / kColumnsAtOnce,
                   [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) {
      const int64_t n0 = group * kColumnsAtOnce;
      __m512 acc[kColumnsAtOnce][ROWS];
      for (int j = 0; j < kColumnsAtOnce; ++j)
        for (int r = 0; r < ROWS; ++r) acc[j][r] = _mm512_setzero_ps();
      for (int64_t k = 0; k < k_in; k += 32) {
        __m512bh xs[ROWS];
        for (int r = 0; r < ROWS; ++r)
          xs[r] = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(x + r * k_in + k));
        for (int j = 0; j < kColumnsAtOnce; ++j) {
          const __m512bh wv = (__m512bh)_mm512_loadu_si512(
              reinterpret_cast<const void*>(w + (n0 + j) * k_in + k));
          for (int r = 0; r < ROWS; ++r) acc[j][r] = _mm512_dpbf16_ps(acc[j][r], xs[r], wv);
        }
      }
      for (int j = 0; j < kColumnsAtOnce; ++j)
        for (int r = 0; r < ROWS; ++r) {
          float v = _mm512_reduce_add_ps(acc[j][r]);
          if (bias != nullptr) v += float(bias[n0 + j]);
          y[r * n_out + n0 + j] = c10::BFloat16(v);
        }
    }
  });
}

}  // namespace
#endif

bool small_gemm_supported() {
#if defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

// x [rows <= 4, K] bf16, weight [N, K] bf16, K % 32 == 0, N % 8 == 0 → [rows, N]
at::Tensor small_gemm(at::Tensor x, at::Tensor weight, c10::optional<at::Tensor> bias) {
  TORCH_CHECK(small_gemm_supported(), "small_gemm needs a CPU with AVX512-BF16");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16,
              "small_gemm is for bfloat16");
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "small_gemm needs contiguous inputs");
  const int64_t rows = x.size(0), k_in = x.size(1), n_out = weight.size(0);
  TORCH_CHECK(rows >= 1 && rows <= 4 && k_in % 32 == 0 && n_out % 8 == 0,
              "small_gemm shape out of range");
  auto y = at::empty({rows, n_out}, x.options());
#if defined(__AVX512BF16__)
  const c10::BFloat16* b = bias.has_value() ? bias->data_ptr<c10::BFloat16>() : nullptr;
  const auto* xp = x.data_ptr<c10::BFloat16>();
  const auto* wp = weight.data_ptr<c10::BFloat16>();
  auto* yp = y.data_ptr<c10::BFloat16>();
  switch (rows) {
    case 1: small_gemm_bf16<1>(xp, wp, b, yp, n_out, k_in); break;
    case 2: small_gemm_bf16<2>(xp, wp, b, yp, n_out, k_in); break;
    case 3: small_gemm_bf16<3>(xp, wp, b, yp, n_out, k_in); break;
    default: small_gemm_bf16<4>(xp, wp, b, yp, n_out, k_in); break;
  }
#endif
  return y;
}
