// y = x · Wᵀ (+ bias) for any number of rows, each row the same whatever the row count.
//
// Row-invariant: each output element is one dot product summed in a fixed order (the
// build's vector lanes over k, one horizontal sum in a fixed tree, the bias, one
// rounding to the output dtype), whatever the number of rows, so a row gets the same
// bits alone or in a batch and speculative verification of 1 + k tokens matches plain
// decoding token for token. Tiles decide only which elements are computed together.
//
// Two paths:
//   * bfloat16 with AVX512-BF16 (below): `_mm512_dpbf16_ps` dot products, 16 lanes over
//     k in steps of 32.
//   * every other build, and float32 activations on any (further below): float32 FMAs on
//     the vectors of vec.h, the weights read as they are stored (bf16 or float32) and
//     widened in registers, so bf16 weights halve the bytes a decode step reads even
//     where the CPU has no bf16 arithmetic.
//
// For a few rows a linear layer is a pass over its weights: threads take groups of 8
// weight rows (one contiguous block), prefetch a later block into L2 (the library GEMM
// and the hardware prefetcher alone reach half of this machine's bandwidth on 1 KiB
// rows), and run every input row over the block in register tiles while it sits in
// L1/L2. With many rows the tiles keep the vector units busy.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "float_gemm.h"
#include "vec.h"

using kvscope_gemm::for_each_group;
using kvscope_gemm::kGroup;
using kvscope_gemm::kTileColumns;
using kvscope_gemm::Prefetch;

#if defined(__AVX512BF16__)
namespace {

constexpr int64_t kLongRows = 4096;  // K from which 6-row tiles beat 4-row ones (L2-bound)

// Sixteen horizontal sums at once: lane i is _mm512_reduce_add_ps(v[i]) to the bit. The
// adds are those of its tree (upper 256 + lower 256, upper 128 + lower 128, lanes {2,3}
// + {0,1}, lane 1 + lane 0) done vertically on shuffled halves; float addition commutes,
// so only which pairs are added matters.
inline __m512 reduce16(const __m512* v) {
  // the tree leaves the sum of slot s in lane 4 * (s % 4) + s / 4, so feed it transposed
  __m512 in[16];
  for (int s = 0; s < 16; ++s) in[s] = v[4 * (s % 4) + s / 4];
  __m512 u[8];
  for (int p = 0; p < 8; ++p) {
    const __m512 lo = _mm512_shuffle_f32x4(in[2 * p], in[2 * p + 1], 0x44);  // a0 a1 b0 b1
    const __m512 hi = _mm512_shuffle_f32x4(in[2 * p], in[2 * p + 1], 0xEE);  // a2 a3 b2 b3
    u[p] = _mm512_add_ps(hi, lo);
  }
  __m512 s[4];
  for (int q = 0; q < 4; ++q) {
    const __m512 lo = _mm512_shuffle_f32x4(u[2 * q], u[2 * q + 1], 0x88);  // 128s 0 2 0 2
    const __m512 hi = _mm512_shuffle_f32x4(u[2 * q], u[2 * q + 1], 0xDD);  // 128s 1 3 1 3
    s[q] = _mm512_add_ps(hi, lo);
  }
  __m512 t[2];
  for (int q = 0; q < 2; ++q) {
    const __m512d a = _mm512_castps_pd(s[2 * q]), b = _mm512_castps_pd(s[2 * q + 1]);
    t[q] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),   // lanes {0,1}
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));  // + lanes {2,3}
  }
  const __m512 even = _mm512_shuffle_ps(t[0], t[1], 0x88);  // lanes 0 2 0 2 of each 128
  const __m512 odd = _mm512_shuffle_ps(t[0], t[1], 0xDD);   // lanes 1 3 1 3 of each 128
  return _mm512_add_ps(even, odd);
}

// y[r, j] for rows r < R of x and weight rows j < C of w: accumulate, reduce, add the
// bias, round, store. x, w and y point at the tile's first row / weight row / element.
template <int C, int R>
inline void tile(const c10::BFloat16* x, const c10::BFloat16* w, const c10::BFloat16* bias,
                 c10::BFloat16* y, int64_t n_out, int64_t k_in, Prefetch& pf) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < k_in; k += 32) {
    __m512bh xs[R];
    for (int r = 0; r < R; ++r)
      xs[r] = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(x + r * k_in + k));
    for (int j = 0; j < C; ++j) {
      const __m512bh wv =
          (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(w + j * k_in + k));
      for (int r = 0; r < R; ++r) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], xs[r], wv);
    }
    pf.step();
  }
  // sixteen sums at a time: lane l of the chunk at e0 is element e0 + l = row * C + column
  constexpr int kSums = R * C;
  __m512 bias16 = _mm512_setzero_ps();
  if (bias != nullptr) {
    alignas(64) float b[16];
    for (int l = 0; l < 16; ++l) b[l] = float(bias[l % C]);
    bias16 = _mm512_load_ps(b);
  }
  for (int e0 = 0; e0 < kSums; e0 += 16) {
    __m512 v[16];
    for (int l = 0; l < 16; ++l)
      v[l] = e0 + l < kSums ? acc[(e0 + l) / C][(e0 + l) % C] : _mm512_setzero_ps();
    __m512 sum = reduce16(v);
    if (bias != nullptr) sum = _mm512_add_ps(sum, bias16);
    alignas(32) c10::BFloat16 out[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(out),
                       _mm512_cvtepi32_epi16(kvscope_vec::Vec{sum}.bits16()));
    for (int e = e0; e < e0 + 16 && e < kSums; e += C)
      std::memcpy(y + (e / C) * n_out, out + (e - e0), C * sizeof(c10::BFloat16));
  }
}

// The last rows % ROWS rows of a block: all 8 columns at once up to 3 rows (1 to 3 rows
// are the memory-bound decode case: 8 weight streams in flight), else two 4-column tiles.
template <int R>
inline void tail_tile(const c10::BFloat16* x, const c10::BFloat16* w, const c10::BFloat16* bias,
                      c10::BFloat16* y, int64_t n_out, int64_t k_in, Prefetch& pf) {
  if constexpr (R <= 3) {
    tile<kGroup, R>(x, w, bias, y, n_out, k_in, pf);
  } else {
    for (int c = 0; c < kGroup; c += kTileColumns)
      tile<kTileColumns, R>(x, w + c * k_in, bias ? bias + c : nullptr, y + c, n_out, k_in, pf);
  }
}

// Full tiles of 4 columns x ROWS rows: 4 x 4 (16 accumulators, one reduce16) while a
// block's 8 weight rows fit L1; 4 x 6 for long rows, where loads come from L2 and
// 10 per 24 dot products beat 8 per 16.
template <int ROWS>
void small_gemm_bf16(const c10::BFloat16* x, const c10::BFloat16* w, const c10::BFloat16* bias,
                     c10::BFloat16* y, int64_t rows, int64_t n_out, int64_t k_in) {
  const int64_t rest = rows % ROWS;
  const int64_t tiles =
      rows / ROWS * (kGroup / kTileColumns) + (rest == 0 ? 0 : rest <= 3 ? 1 : 2);
  for_each_group(n_out, k_in, k_in * 2, tiles, w, [&](int64_t n0, Prefetch& pf) {
    const c10::BFloat16* wg = w + n0 * k_in;
    const c10::BFloat16* bg = bias != nullptr ? bias + n0 : nullptr;
    c10::BFloat16* yg = y + n0;
    int64_t r = 0;
    for (; r + ROWS <= rows; r += ROWS)
      for (int c = 0; c < kGroup; c += kTileColumns)
        tile<kTileColumns, ROWS>(x + r * k_in, wg + c * k_in, bg != nullptr ? bg + c : nullptr,
                                 yg + r * n_out + c, n_out, k_in, pf);
    const c10::BFloat16* xr = x + r * k_in;
    c10::BFloat16* yr = yg + r * n_out;
    switch (rest) {
      case 1: tail_tile<1>(xr, wg, bg, yr, n_out, k_in, pf); break;
      case 2: tail_tile<2>(xr, wg, bg, yr, n_out, k_in, pf); break;
      case 3: tail_tile<3>(xr, wg, bg, yr, n_out, k_in, pf); break;
      case 4: if constexpr (ROWS > 4) tail_tile<4>(xr, wg, bg, yr, n_out, k_in, pf); break;
      case 5: if constexpr (ROWS > 5) tail_tile<5>(xr, wg, bg, yr, n_out, k_in, pf); break;
      default: break;
    }
  });
}

}  // namespace
#endif

template <typename TX, typename TW>
void run_float(const at::Tensor& x, const at::Tensor& weight,
               const c10::optional<at::Tensor>& bias, at::Tensor& y) {
  const TW* b = bias.has_value() ? bias->data_ptr<TW>() : nullptr;
  kvscope_gemm::dense_gemm<TX, TW>(x.data_ptr<TX>(), weight.data_ptr<TW>(), b,
                                   y.data_ptr<TX>(), x.size(0), weight.size(0), x.size(1));
}

// True where bf16 × bf16 calls use the AVX512-BF16 dot products (else float32 FMAs).
bool small_gemm_bf16_dot() {
#if defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

// x [rows, K] bf16 or float32, weight [N, K] bf16 or float32, bias [N] of the weight's
// dtype or none, K % 32 == 0, N % 8 == 0 → [rows, N] in x's dtype; row i of the result
// does not depend on the other rows or on `rows`
at::Tensor small_gemm(at::Tensor x, at::Tensor weight, c10::optional<at::Tensor> bias) {
  const auto fits = [](const at::Tensor& t) {
    return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kFloat;
  };
  TORCH_CHECK(fits(x) && fits(weight), "small_gemm is for bfloat16 and float32");
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1),
              "small_gemm needs x [rows, K] and weight [N, K]");
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "small_gemm needs contiguous inputs");
  const int64_t rows = x.size(0), k_in = x.size(1), n_out = weight.size(0);
  TORCH_CHECK(k_in % 32 == 0 && n_out % 8 == 0, "small_gemm shape out of range");
  if (bias.has_value())
    TORCH_CHECK(bias->scalar_type() == weight.scalar_type() && bias->is_contiguous() &&
                    bias->numel() == n_out,
                "small_gemm needs a contiguous bias of N elements in the weight's dtype");
  auto y = at::empty({rows, n_out}, x.options());
  if (rows == 0 || n_out == 0) return y;
  const bool both_bf16 = x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16;
#if defined(__AVX512BF16__)
  if (both_bf16) {
    const c10::BFloat16* b = bias.has_value() ? bias->data_ptr<c10::BFloat16>() : nullptr;
    const auto* xp = x.data_ptr<c10::BFloat16>();
    const auto* wp = weight.data_ptr<c10::BFloat16>();
    auto* yp = y.data_ptr<c10::BFloat16>();
    if (k_in >= kLongRows) small_gemm_bf16<6>(xp, wp, b, yp, rows, n_out, k_in);
    else small_gemm_bf16<4>(xp, wp, b, yp, rows, n_out, k_in);
    return y;
  }
#endif
  (void)both_bf16;
  AT_DISPATCH_SWITCH(x.scalar_type(), "small_gemm_x",
    AT_DISPATCH_CASE(at::kFloat, [&] {
      using TX = scalar_t;
      AT_DISPATCH_SWITCH(weight.scalar_type(), "small_gemm_w",
        AT_DISPATCH_CASE(at::kFloat, [&] { run_float<TX, scalar_t>(x, weight, bias, y); })
        AT_DISPATCH_CASE(at::kBFloat16, [&] { run_float<TX, scalar_t>(x, weight, bias, y); }));
    })
    AT_DISPATCH_CASE(at::kBFloat16, [&] {
      using TX = scalar_t;
      AT_DISPATCH_SWITCH(weight.scalar_type(), "small_gemm_w",
        AT_DISPATCH_CASE(at::kFloat, [&] { run_float<TX, scalar_t>(x, weight, bias, y); })
        AT_DISPATCH_CASE(at::kBFloat16, [&] { run_float<TX, scalar_t>(x, weight, bias, y); }));
    }));
  return y;
}
