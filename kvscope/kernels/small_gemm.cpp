// y = x · Wᵀ (+ bias) in bfloat16 with AVX512-BF16 dot products, for any number of rows.
//
// Row-invariant: every output element is one dot product accumulated in the same order
// whatever the number of rows (16-lane partial sums over k in steps of 32, then the
// fixed tree of _mm512_reduce_add_ps, then the bias, then one rounding to bf16), so a
// row gets the same bits alone or in a batch; speculative verification of 1 + k tokens
// then matches plain decoding token for token. For a few rows a linear layer is a pass
// over its weights (memory bound): each thread streams 8 weight rows at a time and feeds
// them to every input row, in tiles of up to 3 rows so the tile's accumulators stay in
// registers, while the 8 weight rows stay in L1/L2 for the next tile.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "simd.h"

#if defined(__AVX512BF16__)
namespace {

constexpr int64_t kColumnGrain = 64;
constexpr int kColumnsAtOnce = 8;
constexpr int kRowTile = 3;

// Sixteen horizontal sums at once: lane i is _mm512_reduce_add_ps(v[i]) to the bit. The
// adds are the ones of that tree (upper 256 + lower 256, upper 128 + lower 128, lanes
// {2,3} + {0,1}, lane 1 + lane 0), done vertically on transposed halves; float addition
// is commutative, so only which pairs get added matters.
inline __m512 reduce16(const __m512* v) {
  // the tree leaves the sum of slot s in lane 4 * (s % 4) + s / 4, so feed it transposed
  __m512 in[16];
  for (int s = 0; s < 16; ++s) in[s] = v[4 * (s % 4) + s / 4];
  __m512 u[8];
  for (int p = 0; p < 8; ++p) {
    const __m512 lo = _mm512_shuffle_f32x4(in[2 * p], in[2 * p + 1], 0x44);  // a.0 a.1 b.0 b.1
    const __m512 hi = _mm512_shuffle_f32x4(in[2 * p], in[2 * p + 1], 0xEE);  // a.2 a.3 b.2 b.3
    u[p] = _mm512_add_ps(hi, lo);
  }
  __m512 s[4];
  for (int q = 0; q < 4; ++q) {
    const __m512 lo = _mm512_shuffle_f32x4(u[2 * q], u[2 * q + 1], 0x88);  // chunks 0 2 0 2
    const __m512 hi = _mm512_shuffle_f32x4(u[2 * q], u[2 * q + 1], 0xDD);  // chunks 1 3 1 3
    s[q] = _mm512_add_ps(hi, lo);
  }
  __m512 t[2];
  for (int q = 0; q < 2; ++q) {
    const __m512 lo = _mm512_castpd_ps(
        _mm512_unpacklo_pd(_mm512_castps_pd(s[2 * q]), _mm512_castps_pd(s[2 * q + 1])));
    const __m512 hi = _mm512_castpd_ps(
        _mm512_unpackhi_pd(_mm512_castps_pd(s[2 * q]), _mm512_castps_pd(s[2 * q + 1])));
    t[q] = _mm512_add_ps(lo, hi);  // lanes {0,1} + {2,3} of each 128
  }
  const __m512 even = _mm512_shuffle_ps(t[0], t[1], 0x88);  // lanes 0 2 0 2 per 128
  const __m512 odd = _mm512_shuffle_ps(t[0], t[1], 0xDD);   // lanes 1 3 1 3 per 128
  return _mm512_add_ps(even, odd);
}

// Rows [0, R) of x against weight rows [n0, n0 + 8): acc, reduce, bias, round, store.
template <int R>
inline void tile(const c10::BFloat16* x, const c10::BFloat16* w, bool has_bias, __m512 bias2,
                 c10::BFloat16* y, int64_t n_out, int64_t k_in) {
  __m512 acc[R][kColumnsAtOnce];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kColumnsAtOnce; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < k_in; k += 32) {
    __m512bh xs[R];
    for (int r = 0; r < R; ++r)
      xs[r] = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(x + r * k_in + k));
    for (int j = 0; j < kColumnsAtOnce; ++j) {
      const __m512bh wv =
          (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(w + j * k_in + k));
      for (int r = 0; r < R; ++r) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], xs[r], wv);
    }
  }
  // two rows per reduction: lanes 0-7 the first row's 8 columns, lanes 8-15 the second's
  for (int r = 0; r < R; r += 2) {
    __m512 v[16];
    for (int j = 0; j < kColumnsAtOnce; ++j) {
      v[j] = acc[r][j];
      v[8 + j] = r + 1 < R ? acc[r + 1][j] : _mm512_setzero_ps();
    }
    __m512 sum = reduce16(v);
    if (has_bias) sum = _mm512_add_ps(sum, bias2);
    const __m512i bits = kvscope_simd::bf16_bits(sum);
    const __m256i packed = _mm512_cvtepi32_epi16(bits);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + r * n_out),
                     _mm256_castsi256_si128(packed));
    if (r + 1 < R)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y + (r + 1) * n_out),
                       _mm256_extracti128_si256(packed, 1));
  }
}

void small_gemm_bf16(const c10::BFloat16* x, const c10::BFloat16* w, const c10::BFloat16* bias,
                     c10::BFloat16* y, int64_t rows, int64_t n_out, int64_t k_in) {
  at::parallel_for(0, n_out / kColumnsAtOnce, kColumnGrain / kColumnsAtOnce,
                   [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) {
      const int64_t n0 = group * kColumnsAtOnce;
      const c10::BFloat16* wg = w + n0 * k_in;
      c10::BFloat16* yg = y + n0;
      // bias[n0 .. n0 + 8) in lanes 0-7 and again in 8-15, as float (exact)
      __m512 bias2 = _mm512_setzero_ps();
      if (bias != nullptr) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bias + n0));
        const __m256 b8 =
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
        bias2 = _mm512_insertf32x8(_mm512_castps256_ps512(b8), b8, 1);
      }
      const bool has_bias = bias != nullptr;
      int64_t r = 0;
      for (; r + kRowTile <= rows; r += kRowTile)
        tile<kRowTile>(x + r * k_in, wg, has_bias, bias2, yg + r * n_out, n_out, k_in);
      switch (rows - r) {
        case 1: tile<1>(x + r * k_in, wg, has_bias, bias2, yg + r * n_out, n_out, k_in); break;
        case 2: tile<2>(x + r * k_in, wg, has_bias, bias2, yg + r * n_out, n_out, k_in); break;
        default: break;
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

// x [rows, K] bf16, weight [N, K] bf16, K % 32 == 0, N % 8 == 0 → [rows, N]
at::Tensor small_gemm(at::Tensor x, at::Tensor weight, c10::optional<at::Tensor> bias) {
  TORCH_CHECK(small_gemm_supported(), "small_gemm needs a CPU with AVX512-BF16");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16,
              "small_gemm is for bfloat16");
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "small_gemm needs contiguous inputs");
  const int64_t rows = x.size(0), k_in = x.size(1), n_out = weight.size(0);
  TORCH_CHECK(k_in % 32 == 0 && n_out % 8 == 0, "small_gemm shape out of range");
  auto y = at::empty({rows, n_out}, x.options());
#if defined(__AVX512BF16__)
  if (rows == 0) return y;
  const c10::BFloat16* b = bias.has_value() ? bias->data_ptr<c10::BFloat16>() : nullptr;
  small_gemm_bf16(x.data_ptr<c10::BFloat16>(), weight.data_ptr<c10::BFloat16>(), b,
                  y.data_ptr<c10::BFloat16>(), rows, n_out, k_in);
#endif
  return y;
}
