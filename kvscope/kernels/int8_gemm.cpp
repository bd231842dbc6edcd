// 4-bit linears on 8-bit activations: y = x · Wᵀ (+ b) with W in GGUF's groups of 32
// 4-bit integers (q4, as in quant_gemm.cpp) and each row of x quantized for the call to
// int8 in groups of 32 (a scale max|x| / 127 per group, as llama.cpp's Q8
// activations), so the products are integer dot products (maddubs + madd on AVX2 and
// AVX-512, vpdpbusd with VNNI: 64 products per instruction) instead of widening every
// weight to float32: at one row a third to a half of the float kernel's time, at 64
// rows (with VNNI) 0.5-0.95x. The weights are prefetched a few tiles ahead, since at one
// row a step streams them from memory. 8-bit weights keep float activations: they are
// bound by memory at one row already, and at many rows the float kernel, which widens
// each weight once for all rows, was faster.
//
// Per group g of weight row j and activation row r the integers give
//   I = Σ q_w · q_x  and  y += d_w · d_x · I + (m + zero · d_w) · (d_x · Σ q_x),
// which is (q_w + zero) · d_w + m times d_x · q_x summed over the group. Each output is
// accumulated in one fixed order whatever the number of rows in the call, so a row
// gets the same bits alone or in a batch (decode rows = verification rows).
//
// Activation layout: a block of b groups (b = kBlockGroups, fewer at the end of a row)
// holds the first 16 elements of each of its groups, then the last 16, so they line up
// with the low and the high nibbles of the weights' 16·b bytes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX512BW__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int kGroup = 32;
#if defined(__AVX512BW__) && defined(__AVX512VL__)
constexpr int kBlockGroups = 4;  // 64 bytes of 4-bit weights per register
#elif defined(__AVX2__)
constexpr int kBlockGroups = 2;
#else
constexpr int kBlockGroups = 1;
#endif

// Activation rows quantized to int8 in groups of 32.
struct Activations {
  int64_t k_in, groups, padded;  // padded: room for zero scales after the groups
  std::vector<int8_t> q;          // [rows, K] in the layout above
  std::vector<float> d, s;        // [rows, padded]: scale, scale · Σ q
  std::vector<float> d4;          // [rows, 4 · padded]: each scale 4 times (one per int32
                                  // lane of its group's dot products)

  const int8_t* row(int64_t r) const { return q.data() + r * k_in; }
  const float* scale(int64_t r) const { return d.data() + r * padded; }
  const float* sums(int64_t r) const { return s.data() + r * padded; }
  const float* spread_scale(int64_t r) const { return d4.data() + r * 4 * padded; }
};

// Row r of x (at `v`) into the buffers: per group its scale, the scale times the sum
// of its integers, and the integers in the block layout above.
template <typename TX>
void quantize_row(const TX* v, int64_t r, Activations& a) {
  for (int64_t g = 0; g < a.groups; ++g, v += kGroup) {
    float amax = 0.f;
    for (int i = 0; i < kGroup; ++i) amax = std::max(amax, std::fabs(float(v[i])));
    const float d = amax / 127.f, inverse = d == 0.f ? 0.f : 1.f / d;
    int8_t ints[kGroup];
    int sum = 0;
    for (int i = 0; i < kGroup; ++i) {
      ints[i] = static_cast<int8_t>(std::nearbyint(float(v[i]) * inverse));
      sum += ints[i];
    }
    a.d[r * a.padded + g] = d;
    std::fill_n(a.d4.data() + (r * a.padded + g) * 4, 4, d);
    a.s[r * a.padded + g] = d * float(sum);
    const int64_t block = g / kBlockGroups * kBlockGroups;  // this group's block
    const int64_t b = std::min<int64_t>(kBlockGroups, a.groups - block);
    int8_t* first_half = a.q.data() + r * a.k_in + block * kGroup + (g - block) * (kGroup / 2);
    std::copy(ints, ints + kGroup / 2, first_half);
    std::copy(ints + kGroup / 2, ints + kGroup, first_half + b * (kGroup / 2));
  }
}

template <typename TX>
void quantize_activations(const TX* x, int64_t rows, int64_t k_in, Activations& a) {
  a.k_in = k_in;
  a.groups = k_in / kGroup;
  a.padded = (a.groups + 15) / 16 * 16 + 16;  // 16-float loads from any group stay inside
  a.q.resize(rows * k_in);
  a.d.assign(rows * a.padded, 0.f);
  a.s.assign(rows * a.padded, 0.f);
  a.d4.assign(rows * 4 * a.padded, 0.f);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) quantize_row(x + r * k_in, r, a);
  });
}

// A tile of C weight rows against R activation rows (R·C float outputs). Each output
// sees the same operations in the same order whatever R and C, so a row's bits do not
// depend on the call's rows: per block of groups, acc += float(I) · d_w · d_x on the
// int32 lanes of each group's dot products; at the end the offset terms
// (m + zero · d_w) · s_x, 16 (or 8) groups per vector, then one horizontal sum.
constexpr int kCols = 4;  // weight rows per tile

struct Weights {
  const uint8_t* q;  // [N, K / 2] bytes, two weights each
  const float* d;    // [N, K / 32] scales
  const float* m;    // [N, K / 32] offsets
  float zero;
  int64_t row_bytes, groups;

  const uint8_t* bytes(int64_t j) const { return q + j * row_bytes; }
  const float* scales(int64_t j) const { return d + j * groups; }
  const float* offsets(int64_t j) const { return m + j * groups; }
};

struct ActivationRow {
  const int8_t* q;
  const float* d;   // scales
  const float* s;   // scale · Σ q
  const float* d4;  // each scale 4 times
};

#if defined(__AVX512BW__) && defined(__AVX512VL__)

constexpr int kTileRows = 4;  // 16 accumulators: 4 rows x 4 weight rows

inline __mmask64 byte_mask(int64_t bytes) { return bytes >= 64 ? ~0ull : (1ull << bytes) - 1; }

// the 4 groups' integer products of a block, each group on 4 int32 lanes
inline __m512i block_dot(__m512i lo, __m512i hi, __m512i x_lo, __m512i x_hi) {
#if defined(__AVX512VNNI__)
  return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, x_lo), hi, x_hi);
#else
  const __m512i pairs = _mm512_add_epi16(_mm512_maddubs_epi16(lo, x_lo),
                                         _mm512_maddubs_epi16(hi, x_hi));
  return _mm512_madd_epi16(pairs, _mm512_set1_epi16(1));
#endif
}

// One block of groups from g0 (b of them: 4, or fewer at the end of a row) for every
// pair of the tile: acc[r][c] += float(I) · d_w · d_x. Inlined with its loops unrolled,
// so the accumulators stay in registers (called through a lambda, GCC kept them in
// memory and reloaded them on every block); Full: a block of 4 needs no masks.
template <int R, int C, bool Full>
__attribute__((always_inline)) inline void dot_block(
    const uint8_t* const* wb, const float* const* ws, const ActivationRow* x, int64_t g0,
    int b, __m512 (&acc)[R][C]) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __mmask64 bytes_in = Full ? ~0ull : byte_mask(16 * b);
  const __mmask8 groups_in = Full ? 0xF : static_cast<__mmask8>((1u << b) - 1);
  const int half = Full ? 64 : 16 * b;  // bytes of the first halves of the block's groups
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    const __m128 scales = Full ? _mm_loadu_ps(ws[c] + g0) : _mm_maskz_loadu_ps(groups_in, ws[c] + g0);
    const __m512 dw = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(scales));
    const __m512i bytes = Full ? _mm512_loadu_si512(wb[c] + 16 * g0)
                               : _mm512_maskz_loadu_epi8(bytes_in, wb[c] + 16 * g0);
    const __m512i lo = _mm512_and_si512(bytes, low4);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low4);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const int8_t* xq = x[r].q + 32 * g0;
      const __m512i x_lo = Full ? _mm512_loadu_si512(xq) : _mm512_maskz_loadu_epi8(bytes_in, xq);
      const __m512i x_hi = Full ? _mm512_loadu_si512(xq + half)
                                : _mm512_maskz_loadu_epi8(bytes_in, xq + half);
      const __m512 ints = _mm512_cvtepi32_ps(block_dot(lo, hi, x_lo, x_hi));
      const __m512 dx = _mm512_loadu_ps(x[r].d4 + 4 * g0);
      acc[r][c] = _mm512_fmadd_ps(ints, _mm512_mul_ps(dw, dx), acc[r][c]);
    }
  }
}

template <int R, int C>
void dot_tile(const Weights& w, int64_t j0, const ActivationRow* x, float* out) {
  const uint8_t* wb[C];
  const float* ws[C];
  for (int c = 0; c < C; ++c) {
    wb[c] = w.bytes(j0 + c);
    ws[c] = w.scales(j0 + c);
  }
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  const int64_t full = w.groups / 4 * 4;
  for (int64_t g0 = 0; g0 < full; g0 += 4) dot_block<R, C, true>(wb, ws, x, g0, 4, acc);
  if (full < w.groups)
    dot_block<R, C, false>(wb, ws, x, full, static_cast<int>(w.groups - full), acc);
  for (int64_t g = 0; g < w.groups; g += 16) {
    const __mmask16 in = static_cast<__mmask16>(
        w.groups - g >= 16 ? 0xFFFF : (1u << (w.groups - g)) - 1);
    for (int c = 0; c < C; ++c) {
      const __m512 offset = _mm512_fmadd_ps(_mm512_set1_ps(w.zero),
                                            _mm512_maskz_loadu_ps(in, w.scales(j0 + c) + g),
                                            _mm512_maskz_loadu_ps(in, w.offsets(j0 + c) + g));
      for (int r = 0; r < R; ++r)
        acc[r][c] = _mm512_fmadd_ps(offset, _mm512_loadu_ps(x[r].s + g), acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) out[r * C + c] = _mm512_reduce_add_ps(acc[r][c]);
}

#elif defined(__AVX2__)

constexpr int kTileRows = 2;  // 16 registers: 8 accumulators (2 rows x 4 weight rows)

inline __m256i load_bytes(const void* p, int bytes) {  // 32 bytes, or 16 then zeros
  if (bytes == 32) return _mm256_loadu_si256(static_cast<const __m256i*>(p));
  return _mm256_zextsi128_si256(_mm_loadu_si128(static_cast<const __m128i*>(p)));
}

inline __m128 load_floats(const float* p, int n) {  // n = 1 or 2, the rest zeros
  return n == 2 ? _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)))
                : _mm_load_ss(p);
}

inline __m256 load_first(const float* p, int64_t n) {  // n floats (up to 8), the rest zeros
  if (n >= 8) return _mm256_loadu_ps(p);
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), lanes));
}

// One block of groups from g0 (b = 2, or 1 at the end of a row), inlined with its loops
// unrolled so the accumulators stay in registers (as in the AVX-512 version above).
template <int R, int C>
__attribute__((always_inline)) inline void dot_block(
    const uint8_t* const* wb, const float* const* ws, const ActivationRow* x, int64_t g0,
    int b, __m256 (&acc)[R][C]) {
  const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(0x0F);
  const __m256i spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    const __m256i bytes = load_bytes(wb[c] + 16 * g0, 16 * b);
    const __m256i lo = _mm256_and_si256(bytes, low4);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
    const __m256 dw = _mm256_permutevar8x32_ps(
        _mm256_castps128_ps256(load_floats(ws[c] + g0, b)), spread);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const int8_t* xq = x[r].q + 32 * g0;
      const __m256i pairs = _mm256_add_epi16(
          _mm256_maddubs_epi16(lo, load_bytes(xq, 16 * b)),
          _mm256_maddubs_epi16(hi, load_bytes(xq + 16 * b, 16 * b)));
      const __m256 ints = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
      const __m256 dx = _mm256_loadu_ps(x[r].d4 + 4 * g0);
      acc[r][c] = _mm256_fmadd_ps(ints, _mm256_mul_ps(dw, dx), acc[r][c]);
    }
  }
}

template <int R, int C>
void dot_tile(const Weights& w, int64_t j0, const ActivationRow* x, float* out) {
  const uint8_t* wb[C];
  const float* ws[C];
  for (int c = 0; c < C; ++c) {
    wb[c] = w.bytes(j0 + c);
    ws[c] = w.scales(j0 + c);
  }
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  const int64_t full = w.groups / 2 * 2;
  for (int64_t g0 = 0; g0 < full; g0 += 2) dot_block<R, C>(wb, ws, x, g0, 2, acc);
  if (full < w.groups) dot_block<R, C>(wb, ws, x, full, 1, acc);
  for (int64_t g = 0; g < w.groups; g += 8) {
    for (int c = 0; c < C; ++c) {
      const __m256 offset = _mm256_fmadd_ps(_mm256_set1_ps(w.zero),
                                            load_first(w.scales(j0 + c) + g, w.groups - g),
                                            load_first(w.offsets(j0 + c) + g, w.groups - g));
      for (int r = 0; r < R; ++r)
        acc[r][c] = _mm256_fmadd_ps(offset, _mm256_loadu_ps(x[r].s + g), acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      const __m128 half = _mm_add_ps(_mm256_castps256_ps128(acc[r][c]),
                                     _mm256_extractf128_ps(acc[r][c], 1));
      out[r * C + c] = (half[0] + half[1]) + (half[2] + half[3]);
    }
}

#else  // plain integer loops

constexpr int kTileRows = 1;

template <int R, int C>
void dot_tile(const Weights& w, int64_t j0, const ActivationRow* x, float* out) {
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      const int64_t j = j0 + c;
      float acc = 0.f;
      for (int64_t g = 0; g < w.groups; ++g) {
        const int8_t* xg = x[r].q + 32 * g;
        const uint8_t* q = w.bytes(j) + 16 * g;
        int32_t dot = 0;
        for (int e = 0; e < 16; ++e) dot += (q[e] & 0xF) * xg[e] + (q[e] >> 4) * xg[16 + e];
        acc += float(dot) * (w.scales(j)[g] * x[r].d[g]);
      }
      for (int64_t g = 0; g < w.groups; ++g)
        acc += (w.offsets(j)[g] + w.zero * w.scales(j)[g]) * x[r].s[g];
      out[r * C + c] = acc;
    }
}

#endif

// Activation rows [r0, r0 + R) against weight rows [j0, j0 + kCols): one tile.
template <int R, typename TX>
void row_tiles(const Weights& w, const Activations& a, int64_t r0, int64_t j0, const float* bias,
               TX* y, int64_t n_out) {
  ActivationRow x[R];
  for (int r = 0; r < R; ++r)
    x[r] = {a.row(r0 + r), a.scale(r0 + r), a.sums(r0 + r), a.spread_scale(r0 + r)};
  float sums[R * kCols];
  dot_tile<R, kCols>(w, j0, x, sums);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kCols; ++c) {
      const int64_t j = j0 + c;
      y[(r0 + r) * n_out + j] = TX(sums[r * kCols + c] + (bias ? bias[j] : 0.f));
    }
}

constexpr int64_t kPrefetchTiles = 16;  // about 18 KB ahead for rows of 576 weights

template <typename TX>
void int8_gemm(const TX* x, const Weights& w, const float* bias, TX* y, int64_t rows,
               int64_t n_out, int64_t k_in) {
  thread_local Activations buffer;  // the calling thread's; the workers read it
  Activations& a = buffer;
  quantize_activations(x, rows, k_in, a);
  const int64_t tile_bytes = kCols * w.row_bytes, weight_end = n_out * w.row_bytes;
  at::parallel_for(0, n_out / kCols, 4, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t j0 = tile * kCols;
      // the weights kPrefetchTiles tiles ahead, while this tile computes
      const int64_t ahead = (tile + kPrefetchTiles) * tile_bytes;
      for (int64_t line = ahead; line < std::min(ahead + tile_bytes, weight_end); line += 64)
        __builtin_prefetch(w.q + line, 0, 2);
      const int64_t scales_ahead = std::min(tile + kPrefetchTiles, n_out / kCols - 1) * kCols;
      for (int64_t f = 0; f < kCols * w.groups; f += 16) {  // 16 floats a line
        __builtin_prefetch(w.scales(scales_ahead) + f, 0, 2);
        __builtin_prefetch(w.offsets(scales_ahead) + f, 0, 2);
      }
      int64_t r0 = 0;
      for (; r0 + kTileRows <= rows; r0 += kTileRows)
        row_tiles<kTileRows>(w, a, r0, j0, bias, y, n_out);
      for (; r0 < rows; ++r0) row_tiles<1>(w, a, r0, j0, bias, y, n_out);
    }
  });
}

}  // namespace

// x [rows, K] float32 or bf16; q [N, K / 2] uint8; scales, offsets [N, K / 32] float32;
// zero: 0 (Q4_1) or -8 (Q4_0)
at::Tensor q4_linear_i8(at::Tensor x, at::Tensor q, at::Tensor scales, at::Tensor offsets,
                        double zero, c10::optional<at::Tensor> bias) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "q4_linear_i8: x must be a contiguous [rows, K] float32 or bf16 tensor");
  const int64_t n_out = q.size(0), k_in = x.size(1);
  TORCH_CHECK(k_in % kGroup == 0 && n_out % kCols == 0 && q.scalar_type() == at::kByte &&
                  q.is_contiguous() && q.dim() == 2 && q.size(1) * 2 == k_in,
              "q4_linear_i8: K must be a multiple of 32, N of 4, q uint8 [N, K / 2]");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                  scales.dim() == 2 && scales.size(0) == n_out &&
                  scales.size(1) == k_in / kGroup && offsets.sizes() == scales.sizes() &&
                  offsets.scalar_type() == at::kFloat && offsets.is_contiguous(),
              "q4_linear_i8: scales and offsets must be float32 [N, K / 32]");
  if (bias.has_value())
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() == n_out,
                "q4_linear_i8: bias must be float32 [N]");
  auto y = at::empty({x.size(0), n_out}, x.options());
  if (x.size(0) == 0 || n_out == 0) return y;
  const Weights w{q.data_ptr<uint8_t>(), scales.data_ptr<float>(), offsets.data_ptr<float>(),
                  static_cast<float>(zero), k_in / 2, k_in / kGroup};
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  AT_DISPATCH_SWITCH(x.scalar_type(), "q4_linear_i8",
    AT_DISPATCH_CASE(at::kFloat, [&] {
      int8_gemm(x.data_ptr<scalar_t>(), w, b, y.data_ptr<scalar_t>(), x.size(0), n_out, k_in);
    })
    AT_DISPATCH_CASE(at::kBFloat16, [&] {
      int8_gemm(x.data_ptr<scalar_t>(), w, b, y.data_ptr<scalar_t>(), x.size(0), n_out, k_in);
    }));
  return y;
}
