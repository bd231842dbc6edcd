// Quantized linears on 8-bit activations: y = x · Wᵀ (+ b) with W in GGUF's groups of 32
// (q4 or q8, as in quant_gemm.cpp) and each row of x quantized for the call to int8 in
// groups of 32 (a scale max|x| / 127 per group, as llama.cpp's Q8 activations), so the
// products are integer dot products (maddubs + madd: 32 products in two instructions
// on AVX2, 64 on AVX-512) instead of widening every weight to float32.
//
// Per group g of weight row j and activation row r the integers give
//   I = Σ q_w · q_x  and  y += d_w · d_x · I + (m + zero · d_w) · (d_x · Σ q_x),
// which is (q_w + zero) · d_w + m times d_x · q_x summed over the group. Each output is
// accumulated in one fixed order whatever the number of rows in the call, so a row
// gets the same bits alone or in a batch (decode rows = verification rows).
//
// Activation layout: for the q4 weights a block of b groups (b = kBlockGroups, fewer at
// the end of a row) holds the first 16 elements of each of its groups, then the last
// 16, so they line up with the low and the high nibbles of the weights' 16·b bytes.
// For the q8 weights the activations keep their natural order.
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

  const int8_t* row(int64_t r) const { return q.data() + r * k_in; }
  const float* scale(int64_t r) const { return d.data() + r * padded; }
  const float* sums(int64_t r) const { return s.data() + r * padded; }
};

template <typename TX>
void quantize_activations(const TX* x, int64_t rows, int64_t k_in, bool split_halves,
                          Activations& a) {
  a.k_in = k_in;
  a.groups = k_in / kGroup;
  a.padded = (a.groups + 3) / 4 * 4 + 4;  // 4-float loads from any group stay inside
  a.q.resize(rows * k_in);
  a.d.assign(rows * a.padded, 0.f);
  a.s.assign(rows * a.padded, 0.f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < a.groups; ++g) {
      const TX* v = x + r * k_in + g * kGroup;
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
      a.s[r * a.padded + g] = d * float(sum);
      // where this group's two halves go in its block
      const int64_t block = g / kBlockGroups * kBlockGroups;
      const int64_t b = std::min<int64_t>(kBlockGroups, a.groups - block);
      int8_t* out = a.q.data() + r * k_in;
      if (!split_halves) {
        std::copy(ints, ints + kGroup, out + g * kGroup);
        continue;
      }
      int8_t* base = out + block * kGroup + (g - block) * (kGroup / 2);
      std::copy(ints, ints + kGroup / 2, base);
      std::copy(ints + kGroup / 2, ints + kGroup, base + b * (kGroup / 2));
    }
  }
}

// A tile of kCols weight rows against one activation row: kCols float outputs. The
// weight bytes of a tile stay in L1 while each activation row of the call reads them.
constexpr int kCols = 4;

struct Weights {
  const uint8_t* q;  // q4: [N, K / 2] bytes; q8: [N, K] signed bytes
  const float* d;    // [N, K / 32] scales
  const float* m;    // [N, K / 32] offsets (q4), or nullptr
  float zero;
  int64_t row_bytes, groups;

  const uint8_t* bytes(int64_t j) const { return q + j * row_bytes; }
  const float* scales(int64_t j) const { return d + j * groups; }
  const float* offsets(int64_t j) const { return m + j * groups; }
};

struct ActivationRow {
  const int8_t* q;
  const float* d;  // scales
  const float* s;  // scale · Σ q
};

#if defined(__AVX512BW__) && defined(__AVX512VL__)

inline __mmask64 byte_mask(int64_t bytes) { return bytes >= 64 ? ~0ull : (1ull << bytes) - 1; }

template <bool kQ4>
void dot_cols(const Weights& w, int64_t j0, const ActivationRow& x, float* out) {
  constexpr int per_block = kQ4 ? 4 : 2;  // groups per 64 bytes of weights
  const __m512i ones = _mm512_set1_epi16(1), low4 = _mm512_set1_epi8(0x0F);
  const __m512i spread = kQ4 ? _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)
                             : _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  __m512 acc[kCols];
  __m128 acc_m[kCols];
  for (int c = 0; c < kCols; ++c) acc[c] = _mm512_setzero_ps(), acc_m[c] = _mm_setzero_ps();
  auto step = [&](int64_t g0, int b, __mmask64 bytes_in, __mmask8 groups_in) {
    const __m128 dx = _mm_loadu_ps(x.d + g0);
    if constexpr (kQ4) {
      const __m512i x_lo = _mm512_maskz_loadu_epi8(bytes_in, x.q + 32 * g0);
      const __m512i x_hi = _mm512_maskz_loadu_epi8(bytes_in, x.q + 32 * g0 + 16 * b);
      const __m128 sx = _mm_loadu_ps(x.s + g0);
      for (int c = 0; c < kCols; ++c) {
        const __m512i bytes = _mm512_maskz_loadu_epi8(bytes_in, w.bytes(j0 + c) + 16 * g0);
        const __m512i lo = _mm512_and_si512(bytes, low4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low4);
        const __m512i pairs = _mm512_add_epi16(_mm512_maddubs_epi16(lo, x_lo),
                                               _mm512_maddubs_epi16(hi, x_hi));
        const __m512 ints = _mm512_cvtepi32_ps(_mm512_madd_epi16(pairs, ones));
        const __m128 dw = _mm_maskz_loadu_ps(groups_in, w.scales(j0 + c) + g0);
        const __m128 scale = _mm_mul_ps(dw, dx);
        acc[c] = _mm512_fmadd_ps(ints, _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(scale)),
                                 acc[c]);
        const __m128 offset = _mm_fmadd_ps(_mm_set1_ps(w.zero), dw,
                                           _mm_maskz_loadu_ps(groups_in, w.offsets(j0 + c) + g0));
        acc_m[c] = _mm_fmadd_ps(offset, sx, acc_m[c]);
      }
    } else {
      const __m512i xv = _mm512_maskz_loadu_epi8(bytes_in, x.q + 32 * g0);
      for (int c = 0; c < kCols; ++c) {
        const __m512i bytes = _mm512_maskz_loadu_epi8(bytes_in, w.bytes(j0 + c) + 32 * g0);
        const __m512i signed_x =
            _mm512_mask_sub_epi8(xv, _mm512_movepi8_mask(bytes), _mm512_setzero_si512(), xv);
        const __m512i pairs = _mm512_maddubs_epi16(_mm512_abs_epi8(bytes), signed_x);
        const __m512 ints = _mm512_cvtepi32_ps(_mm512_madd_epi16(pairs, ones));
        const __m128 scale = _mm_mul_ps(_mm_maskz_loadu_ps(groups_in, w.scales(j0 + c) + g0), dx);
        acc[c] = _mm512_fmadd_ps(ints, _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(scale)),
                                 acc[c]);
      }
    }
  };
  const int64_t full = w.groups / per_block * per_block;
  const int bytes_per_group = kQ4 ? 16 : 32;
  for (int64_t g0 = 0; g0 < full; g0 += per_block)
    step(g0, per_block, ~0ull, static_cast<__mmask8>((1u << per_block) - 1));
  if (full < w.groups) {
    const int b = static_cast<int>(w.groups - full);
    step(full, b, byte_mask(bytes_per_group * b), static_cast<__mmask8>((1u << b) - 1));
  }
  for (int c = 0; c < kCols; ++c) {
    const __m128 m = acc_m[c];
    out[c] = _mm512_reduce_add_ps(acc[c]) + ((m[0] + m[1]) + (m[2] + m[3]));
  }
}

#elif defined(__AVX2__)

inline __m256i load_bytes(const void* p, int bytes) {  // 32 bytes, or 16 then zeros
  if (bytes == 32) return _mm256_loadu_si256(static_cast<const __m256i*>(p));
  return _mm256_zextsi128_si256(_mm_loadu_si128(static_cast<const __m128i*>(p)));
}

inline __m128 load_floats(const float* p, int n) {  // n = 1 or 2, the rest zeros
  return n == 2 ? _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)))
                : _mm_load_ss(p);
}

template <bool kQ4>
void dot_cols(const Weights& w, int64_t j0, const ActivationRow& x, float* out) {
  constexpr int per_block = kQ4 ? 2 : 1;  // groups per 32 bytes of weights
  const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(0x0F);
  const __m256i spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  __m256 acc[kCols];
  __m128 acc_m[kCols];
  for (int c = 0; c < kCols; ++c) acc[c] = _mm256_setzero_ps(), acc_m[c] = _mm_setzero_ps();
  auto step = [&](int64_t g0, int b) {
    if constexpr (kQ4) {
      const __m256i x_lo = load_bytes(x.q + 32 * g0, 16 * b);
      const __m256i x_hi = load_bytes(x.q + 32 * g0 + 16 * b, 16 * b);
      const __m128 dx = _mm_loadu_ps(x.d + g0), sx = _mm_loadu_ps(x.s + g0);
      for (int c = 0; c < kCols; ++c) {
        const __m256i bytes = load_bytes(w.bytes(j0 + c) + 16 * g0, 16 * b);
        const __m256i lo = _mm256_and_si256(bytes, low4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
        const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, x_lo),
                                               _mm256_maddubs_epi16(hi, x_hi));
        const __m256 ints = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
        const __m128 dw = load_floats(w.scales(j0 + c) + g0, b);
        const __m128 scale = _mm_mul_ps(dw, dx);
        acc[c] = _mm256_fmadd_ps(ints, _mm256_permutevar8x32_ps(_mm256_castps128_ps256(scale), spread),
                                 acc[c]);
        const __m128 offset = _mm_fmadd_ps(_mm_set1_ps(w.zero), dw,
                                           load_floats(w.offsets(j0 + c) + g0, b));
        acc_m[c] = _mm_fmadd_ps(offset, sx, acc_m[c]);
      }
    } else {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + 32 * g0));
      const __m256 dx = _mm256_broadcast_ss(x.d + g0);
      for (int c = 0; c < kCols; ++c) {
        const __m256i bytes =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.bytes(j0 + c) + 32 * g0));
        const __m256i pairs =
            _mm256_maddubs_epi16(_mm256_abs_epi8(bytes), _mm256_sign_epi8(xv, bytes));
        const __m256 ints = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
        const __m256 scale = _mm256_mul_ps(_mm256_broadcast_ss(w.scales(j0 + c) + g0), dx);
        acc[c] = _mm256_fmadd_ps(ints, scale, acc[c]);
      }
    }
  };
  const int64_t full = w.groups / per_block * per_block;
  for (int64_t g0 = 0; g0 < full; g0 += per_block) step(g0, per_block);
  if (full < w.groups) step(full, static_cast<int>(w.groups - full));
  for (int c = 0; c < kCols; ++c) {
    const __m128 half = _mm_add_ps(_mm256_castps256_ps128(acc[c]), _mm256_extractf128_ps(acc[c], 1));
    const __m128 m = acc_m[c];
    out[c] = ((half[0] + half[1]) + (half[2] + half[3])) + ((m[0] + m[1]) + (m[2] + m[3]));
  }
}

#else  // plain integer loops

template <bool kQ4>
void dot_cols(const Weights& w, int64_t j0, const ActivationRow& x, float* out) {
  for (int c = 0; c < kCols; ++c) {
    const int64_t j = j0 + c;
    float acc = 0.f, acc_m = 0.f;
    for (int64_t g = 0; g < w.groups; ++g) {
      const int8_t* xg = x.q + 32 * g;
      int32_t dot = 0;
      if constexpr (kQ4) {
        const uint8_t* q = w.bytes(j) + 16 * g;
        for (int e = 0; e < 16; ++e) dot += (q[e] & 0xF) * xg[e] + (q[e] >> 4) * xg[16 + e];
        acc_m += (w.offsets(j)[g] + w.zero * w.scales(j)[g]) * x.s[g];
      } else {
        const auto* q = reinterpret_cast<const int8_t*>(w.bytes(j)) + 32 * g;
        for (int e = 0; e < 32; ++e) dot += q[e] * xg[e];
      }
      acc += float(dot) * (w.scales(j)[g] * x.d[g]);
    }
    out[c] = acc + acc_m;
  }
}

#endif

template <bool kQ4, typename TX>
void int8_gemm(const TX* x, const Weights& w, const float* bias, TX* y, int64_t rows,
               int64_t n_out, int64_t k_in) {
  thread_local Activations buffer;  // the calling thread's; the workers read it
  Activations& a = buffer;
  quantize_activations(x, rows, k_in, kQ4, a);
  at::parallel_for(0, n_out / kCols, 4, [&](int64_t begin, int64_t end) {
    float sums[kCols];
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t j0 = tile * kCols;
      for (int64_t r = 0; r < rows; ++r) {
        dot_cols<kQ4>(w, j0, {a.row(r), a.scale(r), a.sums(r)}, sums);
        for (int c = 0; c < kCols; ++c)
          y[r * n_out + j0 + c] = TX(sums[c] + (bias ? bias[j0 + c] : 0.f));
      }
    }
  });
}

void check(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales,
           int64_t q_cols, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "int8 linear: x must be a contiguous [rows, K] float32 or bf16 tensor");
  const int64_t n_out = q.size(0), k_in = x.size(1);
  TORCH_CHECK(k_in % kGroup == 0 && n_out % kCols == 0 && q.is_contiguous() && q.dim() == 2 &&
                  q.size(1) == q_cols,
              "int8 linear: K must be a multiple of 32, N of 4, and q match them");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                  scales.dim() == 2 && scales.size(0) == n_out &&
                  scales.size(1) == k_in / kGroup,
              "int8 linear: scales must be float32 [N, K / 32]");
  if (bias.has_value())
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() == n_out,
                "int8 linear: bias must be float32 [N]");
}

template <bool kQ4>
at::Tensor run(const at::Tensor& x, const Weights& w, int64_t n_out,
               const c10::optional<at::Tensor>& bias) {
  auto y = at::empty({x.size(0), n_out}, x.options());
  if (x.size(0) == 0 || n_out == 0) return y;
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  AT_DISPATCH_SWITCH(x.scalar_type(), "int8_linear",
    AT_DISPATCH_CASE(at::kFloat, [&] {
      int8_gemm<kQ4>(x.data_ptr<scalar_t>(), w, b, y.data_ptr<scalar_t>(), x.size(0), n_out,
                     x.size(1));
    })
    AT_DISPATCH_CASE(at::kBFloat16, [&] {
      int8_gemm<kQ4>(x.data_ptr<scalar_t>(), w, b, y.data_ptr<scalar_t>(), x.size(0), n_out,
                     x.size(1));
    }));
  return y;
}

}  // namespace

// x [rows, K]; q [N, K / 2] uint8; scales, offsets [N, K / 32] float32; zero: 0 or -8
at::Tensor q4_linear_i8(at::Tensor x, at::Tensor q, at::Tensor scales, at::Tensor offsets,
                        double zero, c10::optional<at::Tensor> bias) {
  check(x, q, scales, x.size(1) / 2, bias);
  TORCH_CHECK(q.scalar_type() == at::kByte && offsets.sizes() == scales.sizes() &&
                  offsets.scalar_type() == at::kFloat && offsets.is_contiguous(),
              "q4_linear_i8: q uint8 [N, K / 2], offsets float32 [N, K / 32]");
  const Weights w{q.data_ptr<uint8_t>(), scales.data_ptr<float>(), offsets.data_ptr<float>(),
                  static_cast<float>(zero), x.size(1) / 2, x.size(1) / kGroup};
  return run<true>(x, w, q.size(0), bias);
}

// x [rows, K]; q [N, K] int8; scales [N, K / 32] float32
at::Tensor q8_linear_i8(at::Tensor x, at::Tensor q, at::Tensor scales,
                        c10::optional<at::Tensor> bias) {
  check(x, q, scales, x.size(1), bias);
  TORCH_CHECK(q.scalar_type() == at::kChar, "q8_linear_i8: q must be int8 [N, K]");
  const Weights w{reinterpret_cast<const uint8_t*>(q.data_ptr<int8_t>()),
                  scales.data_ptr<float>(), nullptr, 0.f, x.size(1), x.size(1) / kGroup};
  return run<false>(x, w, q.size(0), bias);
}
