// 4-bit linears on 8-bit activations: y = x · Wᵀ (+ b) with W in GGUF's groups of 32
// 4-bit integers and each row of x quantized for the call to int8 in groups of 32 (a
// scale max|x| / 127 per group, as llama.cpp's Q8 activations), so the products are
// integer dot products instead of widening every weight to float32.
//
// The weights come interleaved 16 rows at a time (model/quant.py `interleave`): for
// each group, 4 vectors of 64 bytes, vector j holding 4 bytes of each of the 16 rows,
// whose low nibbles are elements 8j..8j+3 of the group and high nibbles 8j+4..8j+7.
// So one integer multiply-add of such a vector with 4 activation bytes broadcast to
// every lane (vpdpbusd with VNNI; maddubs + madd without) works on 16 outputs at once,
// each int32 lane is one output's dot product, and the float work (the scales, the
// offset term) is one vector operation for 16 outputs instead of one per output and
// group followed by a horizontal sum. At 64 rows this is what lets 4-bit weights keep
// up with a bf16 GEMM; at one row it streams the weights once.
//
// Per group g of output j and activation row r, with I = Σ q_w · q_x (exact integers):
//   y += float(I) · (d_w · d_x);  y += (m + zero · d_w) · (d_x · Σ q_x)
// which is (q_w + zero) · d_w + m times d_x · q_x summed over the group. Each output
// sees exactly these operations in this order on every instruction set and for any
// number of rows, so a row gets the same bits alone or in a batch (decode rows =
// verification rows), and the AVX-512, AVX2 and plain builds agree bit for bit.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dispatch.h"
#include "vec.h"

namespace {

constexpr int kGroup = 32;
constexpr int kBlockRows = 16;                       // weight rows interleaved together
constexpr int kGroupBytes = kBlockRows * kGroup / 2;  // 256 bytes a group of a block

// Activation rows quantized to int8 in groups of 32, in their own order.
struct Activations {
  int64_t k_in = 0, groups = 0;
  std::vector<int8_t> q;   // [rows, K]
  std::vector<float> d, s;  // [rows, groups]: scale, scale · Σ q
};

// Each group: d = max|v| / 127, q = round-to-nearest-even(v · (1 / d)), in vectors (a
// maximum is exact in any order, so this is the scalar loop's every bit).
template <typename TX>
void quantize_row(const TX* v, int64_t r, Activations& a) {
  using kvscope_vec::Vec;
  int8_t* ints = a.q.data() + r * a.k_in;
  constexpr int kVecs = kGroup / Vec::kLanes;
  for (int64_t g = 0; g < a.groups; ++g, v += kGroup, ints += kGroup) {
    Vec x[kVecs], peak = Vec::zero();
    for (int i = 0; i < kVecs; ++i) {
      x[i] = Vec::load(v + i * Vec::kLanes);
      peak = Vec::max(peak, Vec::max(x[i], Vec::zero() - x[i]));  // |x|, never -0
    }
    const float d = peak.max_lane() / 127.f, inverse = d == 0.f ? 0.f : 1.f / d;
    alignas(64) float rounded[kGroup];
    for (int i = 0; i < kVecs; ++i)
      Vec::round(x[i] * Vec::set1(inverse)).store(rounded + i * Vec::kLanes);
    int sum = 0;
    for (int i = 0; i < kGroup; ++i) {
      ints[i] = static_cast<int8_t>(rounded[i]);
      sum += ints[i];
    }
    a.d[r * a.groups + g] = d;
    a.s[r * a.groups + g] = d * float(sum);
  }
}

template <typename TX>
void quantize_activations(const TX* x, int64_t rows, int64_t k_in, Activations& a) {
  a.k_in = k_in;
  a.groups = k_in / kGroup;
  a.q.resize(rows * k_in);
  a.d.resize(rows * a.groups);
  a.s.resize(rows * a.groups);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) quantize_row(x + r * k_in, r, a);
  });
}

struct Weights {
  const uint8_t* q;  // [N / 16, groups, 256]
  const float* d;    // [N / 16, groups, 16] scales
  const float* m;    // [N / 16, groups, 16] offsets
  float zero;
  int64_t groups;

  const uint8_t* bytes(int64_t block, int64_t g) const {
    return q + (block * groups + g) * kGroupBytes;
  }
  const float* scales(int64_t block, int64_t g) const { return d + (block * groups + g) * 16; }
  const float* offsets(int64_t block, int64_t g) const { return m + (block * groups + g) * 16; }
};

struct ActivationRow {
  const int8_t* q;
  const float* d;  // scales
  const float* s;  // scale · Σ q
};

inline int32_t four_bytes(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

template <typename TX>
void store_outputs(const float* values, const float* bias, TX* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = TX(values[i] + (bias ? bias[i] : 0.f));
}

#if defined(__AVX512BW__) && defined(__AVX512VL__)

constexpr int kLanes = 16;  // outputs per vector: one block
constexpr int kMaxRows = 8;
constexpr int kVecsPerBlock = 1;

// C vectors of outputs from block column `col0` (one vector = one block of 16 rows)
// against R activation rows: out[r][c · 16 + lane].
template <int R, int C>
void dot_tile(const Weights& w, int64_t col0, const ActivationRow* x, float* out) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512 zero = _mm512_set1_ps(w.zero);
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
#if defined(__AVX512VNNI__)
    __m512i dot[R][C];
#else
    __m512i dot16[R][C];  // pairs of products summed in int16: at most 16 · 15 · 127
#endif
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) {
#if defined(__AVX512VNNI__)
        dot[r][c] = _mm512_setzero_si512();
#else
        dot16[r][c] = _mm512_setzero_si512();
#endif
      }
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        const uint8_t* p = w.bytes(col0 + c, g) + 64 * j;
        const __m512i bytes = _mm512_loadu_si512(p);
        const __m512i lo = _mm512_and_si512(bytes, low4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low4);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const int8_t* xq = x[r].q + kGroup * g + 8 * j;
          const __m512i x_lo = _mm512_set1_epi32(four_bytes(xq));
          const __m512i x_hi = _mm512_set1_epi32(four_bytes(xq + 4));
#if defined(__AVX512VNNI__)
          dot[r][c] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(dot[r][c], lo, x_lo), hi, x_hi);
#else
          dot16[r][c] = _mm512_add_epi16(
              dot16[r][c], _mm512_add_epi16(_mm512_maddubs_epi16(lo, x_lo),
                                            _mm512_maddubs_epi16(hi, x_hi)));
#endif
        }
      }
    }
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const __m512 dw = _mm512_loadu_ps(w.scales(col0 + c, g));
      const __m512 offset = _mm512_fmadd_ps(zero, dw, _mm512_loadu_ps(w.offsets(col0 + c, g)));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
#if defined(__AVX512VNNI__)
        const __m512i ints = dot[r][c];
#else
        const __m512i ints = _mm512_madd_epi16(dot16[r][c], _mm512_set1_epi16(1));
#endif
        const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(x[r].d[g]));
        acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints), scale, acc[r][c]);
        acc[r][c] = _mm512_fmadd_ps(offset, _mm512_set1_ps(x[r].s[g]), acc[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + (r * C + c) * kLanes, acc[r][c]);
}

#elif defined(__AVX2__)

// An empty asm that claims to change v: GCC may no longer reassociate the integer sums
// around it. Without it, it rebuilt each group's 32 products into a tree, computed them
// all first and spilled most to the stack (16 vector registers only).
inline void keep_in_register(__m256i& v) { asm("" : "+x"(v)); }

constexpr int kLanes = 8;  // outputs per vector: half a block
constexpr int kMaxRows = 4;
constexpr int kVecsPerBlock = 2;

// As the AVX-512 tile, on vectors of 8 outputs: vector column v is half v % 2 of
// block v / 2 (bytes 32 · (v % 2) of each 64, scales 8 · (v % 2) of each 16).
template <int R, int C>
void dot_tile(const Weights& w, int64_t col0, const ActivationRow* x, float* out) {
  const __m256i low4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const __m256 zero = _mm256_set1_ps(w.zero);
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
    __m256i dot16[R][C];  // pairs of products summed in int16: at most 16 · 15 · 127
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) dot16[r][c] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        const int64_t v = col0 + c;
        const uint8_t* p = w.bytes(v / 2, g) + 64 * j + 32 * (v % 2);
        const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        const __m256i lo = _mm256_and_si256(bytes, low4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const int8_t* xq = x[r].q + kGroup * g + 8 * j;
          const __m256i x_lo = _mm256_set1_epi32(four_bytes(xq));
          const __m256i x_hi = _mm256_set1_epi32(four_bytes(xq + 4));
          dot16[r][c] = _mm256_add_epi16(
              dot16[r][c], _mm256_add_epi16(_mm256_maddubs_epi16(lo, x_lo),
                                            _mm256_maddubs_epi16(hi, x_hi)));
          keep_in_register(dot16[r][c]);
        }
      }
    }
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const int64_t v = col0 + c;
      const __m256 dw = _mm256_loadu_ps(w.scales(v / 2, g) + 8 * (v % 2));
      const __m256 offset =
          _mm256_fmadd_ps(zero, dw, _mm256_loadu_ps(w.offsets(v / 2, g) + 8 * (v % 2)));
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m256i ints = _mm256_madd_epi16(dot16[r][c], ones);
        const __m256 scale = _mm256_mul_ps(dw, _mm256_set1_ps(x[r].d[g]));
        acc[r][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ints), scale, acc[r][c]);
        acc[r][c] = _mm256_fmadd_ps(offset, _mm256_set1_ps(x[r].s[g]), acc[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(out + (r * C + c) * kLanes, acc[r][c]);
}

#else  // plain loops, the same operations one output at a time

constexpr int kLanes = 16;
constexpr int kMaxRows = 1;
constexpr int kVecsPerBlock = 1;

template <int R, int C>
void dot_tile(const Weights& w, int64_t col0, const ActivationRow* x, float* out) {
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      for (int lane = 0; lane < kLanes; ++lane) {
        float acc = 0.f;
        for (int64_t g = 0; g < w.groups; ++g) {
          const uint8_t* bytes = w.bytes(col0 + c, g);
          const int8_t* xq = x[r].q + kGroup * g;
          int32_t dot = 0;
          for (int j = 0; j < 4; ++j)
            for (int b = 0; b < 4; ++b) {
              const uint8_t byte = bytes[64 * j + 4 * lane + b];
              dot += (byte & 0xF) * xq[8 * j + b] + (byte >> 4) * xq[8 * j + 4 + b];
            }
          const float dw = w.scales(col0 + c, g)[lane];
          const float offset = std::fma(w.zero, dw, w.offsets(col0 + c, g)[lane]);
          const float scale = dw * x[r].d[g];
          acc = std::fma(float(dot), scale, acc);
          acc = std::fma(offset, x[r].s[g], acc);
        }
        out[(r * C + c) * kLanes + lane] = acc;
      }
}

#endif

// Rows [r0, r0 + R) against output vectors [col0, col0 + C), written to y (+ bias).
template <int R, int C, typename TX>
void tile(const Weights& w, const Activations& a, int64_t r0, int64_t col0, const float* bias,
          TX* y, int64_t n_out) {
  ActivationRow x[R];
  for (int r = 0; r < R; ++r)
    x[r] = {a.q.data() + (r0 + r) * a.k_in, a.d.data() + (r0 + r) * a.groups,
            a.s.data() + (r0 + r) * a.groups};
  float sums[R * C * kLanes];
  dot_tile<R, C>(w, col0, x, sums);
  const int64_t j0 = col0 * kLanes;
  for (int r = 0; r < R; ++r)
    store_outputs(sums + r * C * kLanes, bias ? bias + j0 : nullptr,
                  y + (r0 + r) * n_out + j0, C * kLanes);
}

// Rows [first, first + rows) against output vectors [col0, col0 + C): kMaxRows at a
// time, then 4, 2, 1.
template <int C, typename TX>
void rows_against(const Weights& w, const Activations& a, int64_t first, int64_t rows,
                  int64_t col0, const float* bias, TX* y, int64_t n_out) {
  int64_t r0 = first;
  rows += first;
  for (; r0 + kMaxRows <= rows; r0 += kMaxRows) tile<kMaxRows, C>(w, a, r0, col0, bias, y, n_out);
  if constexpr (kMaxRows > 4)
    if (r0 + 4 <= rows) tile<4, C>(w, a, r0, col0, bias, y, n_out), r0 += 4;
  if constexpr (kMaxRows > 2)
    if (r0 + 2 <= rows) tile<2, C>(w, a, r0, col0, bias, y, n_out), r0 += 2;
  if constexpr (kMaxRows > 1)
    if (r0 < rows) tile<1, C>(w, a, r0, col0, bias, y, n_out);
}

// Output vectors a tile takes: more when few rows share each weight load (so the integer
// sums of several vectors overlap), fewer when there are few vectors per thread.
int vectors_per_tile(int64_t rows, int64_t vectors) {
  int c = rows >= kMaxRows ? 1 : rows >= 4 ? 2 : 4;
  while (c > 1 && (vectors % c != 0 || vectors / c < 4 * at::get_num_threads())) c /= 2;
  return c;
}

constexpr int64_t kPrefetchVectors = 8;  // weights this many output vectors ahead
constexpr int64_t kChunkRows = 256;      // 144 KB of int8 rows at K = 576

// At one row a step streams the weights: ask for the next ones, with their scales and
// offsets (a third of the bytes), while this computes. Without the scales' prefetch a
// 2-core Zen 3 read the 30 layers' Q4_1 weights from DRAM at 13.5 GB/s, with it ~16
// (its 2 threads read 27 GB/s).
void prefetch_ahead(const Weights& w, int64_t vector, int64_t count, int64_t blocks) {
  const int64_t first = vector / kVecsPerBlock;
  const int64_t end = std::min(blocks, (vector + count - 1) / kVecsPerBlock + 1);
  if (first >= end) return;
  const uint8_t* q = w.bytes(first, 0);
  for (int64_t line = 0; line < (end - first) * w.groups * kGroupBytes; line += 64)
    __builtin_prefetch(q + line, 0, 2);
  const float* d = w.scales(first, 0);
  const float* m = w.offsets(first, 0);
  for (int64_t i = 0; i < (end - first) * w.groups * kBlockRows; i += 16) {  // 64-byte lines
    __builtin_prefetch(d + i, 0, 2);
    __builtin_prefetch(m + i, 0, 2);
  }
}

template <typename TX>
void int8_gemm(const TX* x, const Weights& w, const float* bias, TX* y, int64_t rows,
               int64_t n_out, int64_t k_in) {
  thread_local Activations buffer;  // the calling thread's; the workers read it
  Activations& a = buffer;
  quantize_activations(x, rows, k_in, a);
  const int64_t vectors = n_out / kLanes;
  const int c = vectors_per_tile(rows, vectors);
  const int64_t tiles = vectors / c;
  const int64_t blocks = n_out / kBlockRows;
  // a prompt's rows a chunk at a time, so that a chunk's int8 rows stay in cache while
  // every output column reads them
  for (int64_t r0 = 0; r0 < rows; r0 += kChunkRows) {
    const int64_t chunk = std::min(kChunkRows, rows - r0);
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t col0 = t * c;
        prefetch_ahead(w, col0 + kPrefetchVectors, c, blocks);
        if (c == 4) rows_against<4>(w, a, r0, chunk, col0, bias, y, n_out);
        else if (c == 2) rows_against<2>(w, a, r0, chunk, col0, bias, y, n_out);
        else rows_against<1>(w, a, r0, chunk, col0, bias, y, n_out);
      }
    });
  }
}

void check_interleaved(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& offsets,
                       const char* name) {
  TORCH_CHECK(q.scalar_type() == at::kByte && q.is_contiguous() && q.dim() == 3 &&
                  q.size(2) == kGroupBytes,
              name, ": q must be uint8 [N / 16, K / 32, 256] (model/quant.py interleave)");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                  scales.dim() == 3 && scales.size(0) == q.size(0) &&
                  scales.size(1) == q.size(1) && scales.size(2) == kBlockRows &&
                  offsets.sizes() == scales.sizes() && offsets.scalar_type() == at::kFloat &&
                  offsets.is_contiguous(),
              name, ": scales and offsets must be float32 [N / 16, K / 32, 16]");
}

// The weights of an interleaved tensor in row order, [N, K] of `TX`, each computed as
// (q + zero) · d + m (the formula of quant_gemm.cpp's q4_dequantize: the same bits).
template <typename TX>
void dequantize_rows(const Weights& w, int64_t n_out, TX* out) {
  using kvscope_vec::Vec;
  const int64_t k_in = w.groups * kGroup;
  const Vec zero = Vec::set1(w.zero);
  at::parallel_for(0, n_out, 16, [&](int64_t begin, int64_t end) {
    alignas(64) float ints[kGroup];
    for (int64_t j = begin; j < end; ++j) {
      const int64_t block = j / kBlockRows, lane = j % kBlockRows;
      for (int64_t g = 0; g < w.groups; ++g) {
        const uint8_t* bytes = w.bytes(block, g) + 4 * lane;
        for (int i = 0; i < 4; ++i)
          for (int b = 0; b < 4; ++b) {
            ints[8 * i + b] = float(bytes[64 * i + b] & 0xF);
            ints[8 * i + 4 + b] = float(bytes[64 * i + b] >> 4);
          }
        const Vec d = Vec::set1(w.scales(block, g)[lane]), m = Vec::set1(w.offsets(block, g)[lane]);
        // zero added unconditionally (+0 is exact): GCC 12 turned `if (zero != 0)` here
        // into an add masked to lane 0. q · d is exact (4-bit times an fp16 scale), so a
        // contracted multiply-add gives the same bits as the two operations.
        for (int e = 0; e < kGroup; e += Vec::kLanes)
          ((Vec::load(ints + e) + zero) * d + m).store(out + j * k_in + kGroup * g + e);
      }
    }
  });
}

Weights weights_of(const at::Tensor& q, const at::Tensor& scales, const at::Tensor& offsets,
                   double zero) {
  return {q.data_ptr<uint8_t>(), scales.data_ptr<float>(), offsets.data_ptr<float>(),
          static_cast<float>(zero), q.size(1)};
}

}  // namespace

// x [rows, K] float32 or bf16; q, scales, offsets interleaved 16 weight rows at a time
// ([N / 16, K / 32, 256] uint8, [N / 16, K / 32, 16] float32); zero: 0 (Q4_1) or -8 (Q4_0)
at::Tensor q4_linear_i8(at::Tensor x, at::Tensor q, at::Tensor scales, at::Tensor offsets,
                        double zero, c10::optional<at::Tensor> bias) {
  check_interleaved(q, scales, offsets, "q4_linear_i8");
  const int64_t n_out = q.size(0) * kBlockRows, k_in = q.size(1) * kGroup;
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) == k_in &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "q4_linear_i8: x must be a contiguous [rows, K] float32 or bf16 tensor");
  if (bias.has_value())
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() == n_out,
                "q4_linear_i8: bias must be float32 [N]");
  auto y = at::empty({x.size(0), n_out}, x.options());
  if (x.size(0) == 0 || n_out == 0) return y;
  const Weights w = weights_of(q, scales, offsets, zero);
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  KVSCOPE_DISPATCH(x.scalar_type(), "q4_linear_i8", [&] {
    int8_gemm(x.data_ptr<scalar_t>(), w, b, y.data_ptr<scalar_t>(), x.size(0), n_out, k_in);
  });
  return y;
}

// the interleaved weights as a dense [N, K] tensor, bf16 or float32
at::Tensor q4_interleaved_dequantize(at::Tensor q, at::Tensor scales, at::Tensor offsets,
                                     double zero, bool bf16) {
  check_interleaved(q, scales, offsets, "q4_interleaved_dequantize");
  const int64_t n_out = q.size(0) * kBlockRows;
  const auto dtype = bf16 ? at::kBFloat16 : at::kFloat;
  auto out = at::empty({n_out, q.size(1) * kGroup}, at::TensorOptions().dtype(dtype));
  const Weights w = weights_of(q, scales, offsets, zero);
  KVSCOPE_DISPATCH(dtype, "q4_interleaved_dequantize",
                   [&] { dequantize_rows(w, n_out, out.data_ptr<scalar_t>()); });
  return out;
}
