// One float32 vector type for every CPU the kernels are built for, so each kernel is
// written once. `Vec` holds kLanes floats: 16 with AVX-512, 8 with AVX2 + FMA, and 8
// in plain arrays elsewhere (the compiler turns those loops into NEON or SSE code).
// Which one a build gets follows from the compiler flags of that build; build.py
// compiles one module per instruction set and picks the best the CPU runs.
//
// The operations are the ones the kernels need: loads and stores of float32 and of
// bfloat16 (widened exactly; stored with round-to-nearest-even, as a torch cast does),
// fused multiply-add, horizontal sums (of one vector, or of kLanes vectors at once) and
// maxima in a fixed order (so a kernel's result does not depend on what else is in the
// batch), exp, and keeping the first n lanes.
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace kvscope_vec {

// The instruction set this translation unit is compiled for, as build.py names it.
#if defined(__AVX512F__) && defined(__AVX512BF16__)
inline constexpr const char* kIsa = "avx512_bf16";
#elif defined(__AVX512F__) && defined(__AVX512VNNI__)
inline constexpr const char* kIsa = "avx512_vnni";
#elif defined(__AVX512F__)
inline constexpr const char* kIsa = "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr const char* kIsa = "avx2";
#else
inline constexpr const char* kIsa = "generic";
#endif

// float32 bits → bfloat16 bits, round to nearest even (what a torch cast does)
inline uint16_t bf16_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// the Taylor coefficients of 2^f = e^(f ln2) to degree 6, highest first
inline constexpr float kExp2Poly[7] = {1.5403530393381606e-4f, 1.3333558146428443e-3f,
                                       9.618129107628477e-3f,  5.550410866482158e-2f,
                                       0.2402265069591007f,    0.6931471805599453f,
                                       1.0f};
inline constexpr float kLog2e = 1.4426950408889634f;

#if defined(__AVX512F__)

struct Vec {
  static constexpr int kLanes = 16;
  static constexpr int kRegisters = 32;  // vector registers the ISA has
  __m512 v;

  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec set1(float x) { return {_mm512_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec load(const c10::BFloat16* p) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16))};
  }
  // 16 signed 8-bit integers
  // 16 quantized values: the low or the high nibbles of 16 bytes
  static Vec load_nibbles(const uint8_t* p, bool high) {
    __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    if (high) return {_mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4))};
    return {_mm512_cvtepi32_ps(_mm512_and_si512(q, _mm512_set1_epi32(0xF)))};
  }
  static Vec load_int8(const int8_t* p) {
    return {_mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))))};
  }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store(c10::BFloat16* p) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bits16()));
  }
  // bfloat16 bits of each lane (round to nearest even), in the low half of the lane
  __m512i bits16() const {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    const __m512i bias = _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF));
    return _mm512_srli_epi32(_mm512_add_epi32(bits, bias), 16);
  }
  Vec rounded_bf16() const { return {_mm512_castsi512_ps(_mm512_slli_epi32(bits16(), 16))}; }

  friend Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm512_div_ps(a.v, b.v)}; }
  static Vec fmadd(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }
  static Vec min(Vec a, Vec b) { return {_mm512_min_ps(a.v, b.v)}; }
  static Vec round(Vec a) {
    return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  // a * 2^n for integral n in [-126, 127]
  static Vec scale2(Vec a, Vec n) { return {_mm512_scalef_ps(a.v, n.v)}; }
  float sum() const { return _mm512_reduce_add_ps(v); }
  // lane i = d[i].sum(), for 16 vectors at once and in sum()'s order (lanes i + i+8,
  // then + i+4, then + i+2, then + i+1, as _mm512_reduce_add_ps adds them), so a result
  // is the same bits either way: the transposing shuffles of four rounds instead of a
  // horizontal sum of each vector
  static Vec sums(const Vec* d) {
    __m512 halves[8], quarters[4], eighths[2];
    for (int i = 0; i < 8; ++i)  // [d[2i] 8 partials | d[2i+1] 8 partials]
      halves[i] = _mm512_add_ps(
          _mm512_shuffle_f32x4(d[2 * i].v, d[2 * i + 1].v, _MM_SHUFFLE(1, 0, 1, 0)),
          _mm512_shuffle_f32x4(d[2 * i].v, d[2 * i + 1].v, _MM_SHUFFLE(3, 2, 3, 2)));
    for (int i = 0; i < 4; ++i)  // 128-bit lane k: vector 4i + k's 4 partials
      quarters[i] = _mm512_add_ps(
          _mm512_shuffle_f32x4(halves[2 * i], halves[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
          _mm512_shuffle_f32x4(halves[2 * i], halves[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int i = 0; i < 2; ++i) {  // lane k: [8i + k: 2 partials, 8i + 4 + k: 2 partials]
      const __m512d x = _mm512_castps_pd(quarters[2 * i]);
      const __m512d y = _mm512_castps_pd(quarters[2 * i + 1]);
      eighths[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    // lane 4k + m: vector 4m + k; then each vector's sum to its own lane
    const __m512 mixed = _mm512_add_ps(
        _mm512_shuffle_ps(eighths[0], eighths[1], _MM_SHUFFLE(2, 0, 2, 0)),
        _mm512_shuffle_ps(eighths[0], eighths[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7,
                                            11, 15);
    return {_mm512_permutexvar_ps(order, mixed)};
  }
  float max_lane() const { return _mm512_reduce_max_ps(v); }
  static __mmask16 first(int64_t count) {
    if (count <= 0) return 0;
    if (count >= 16) return 0xFFFF;
    return static_cast<__mmask16>((1u << count) - 1);
  }
  // lanes [0, count) of a, the rest `fill`
  static Vec keep_first(Vec a, int64_t count, Vec fill) {
    return {_mm512_mask_blend_ps(first(count), fill.v, a.v)};
  }
};

#elif defined(__AVX2__) && defined(__FMA__)

struct Vec {
  static constexpr int kLanes = 8;
  static constexpr int kRegisters = 16;
  __m256 v;

  static Vec zero() { return {_mm256_setzero_ps()}; }
  static Vec set1(float x) { return {_mm256_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec load(const c10::BFloat16* p) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))};
  }
  static Vec load_nibbles(const uint8_t* p, bool high) {
    __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    if (high) return {_mm256_cvtepi32_ps(_mm256_srli_epi32(q, 4))};
    return {_mm256_cvtepi32_ps(_mm256_and_si256(q, _mm256_set1_epi32(0xF)))};
  }
  static Vec load_int8(const int8_t* p) {
    return {_mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))))};
  }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void store(c10::BFloat16* p) const {
    // the 16-bit halves in order: pack (0..3 | 4..7 per 128-bit lane), then join the lanes
    const __m256i packed = _mm256_packus_epi32(bits16(), bits16());
    const __m256i ordered = _mm256_permute4x64_epi64(packed, 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(ordered));
  }
  __m256i bits16() const {
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    const __m256i bias = _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF));
    return _mm256_srli_epi32(_mm256_add_epi32(bits, bias), 16);
  }
  Vec rounded_bf16() const { return {_mm256_castsi256_ps(_mm256_slli_epi32(bits16(), 16))}; }

  friend Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm256_div_ps(a.v, b.v)}; }
  static Vec fmadd(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec max(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
  static Vec min(Vec a, Vec b) { return {_mm256_min_ps(a.v, b.v)}; }
  static Vec round(Vec a) {
    return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  }
  static Vec scale2(Vec a, Vec n) {  // exact: 2^n is built in the exponent field
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n.v),
                                                         _mm256_set1_epi32(127)), 23);
    return {_mm256_mul_ps(a.v, _mm256_castsi256_ps(e))};
  }
  float sum() const {  // (upper 128 + lower 128), then lanes {2,3} + {0,1}, then 1 + 0
    __m128 s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // lane i = d[i].sum(), for 8 vectors at once and in sum()'s order (lanes i + i+4, then
  // + i+2, then + i+1), so a result is the same bits either way
  static Vec sums(const Vec* d) {
    __m256 halves[4], quarters[2];
    for (int i = 0; i < 4; ++i)  // [d[2i] 4 partials | d[2i+1] 4 partials]
      halves[i] = _mm256_add_ps(_mm256_permute2f128_ps(d[2 * i].v, d[2 * i + 1].v, 0x31),
                                _mm256_permute2f128_ps(d[2 * i].v, d[2 * i + 1].v, 0x20));
    for (int i = 0; i < 2; ++i) {  // low: [4i: 2 partials, 4i+2: 2], high: 4i+1, 4i+3
      const __m256d x = _mm256_castps_pd(halves[2 * i]), y = _mm256_castps_pd(halves[2 * i + 1]);
      quarters[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpackhi_pd(x, y)),
                                  _mm256_castpd_ps(_mm256_unpacklo_pd(x, y)));
    }
    // low lanes: vectors 0, 2, 4, 6; high lanes: 1, 3, 5, 7
    const __m256 mixed = _mm256_add_ps(
        _mm256_shuffle_ps(quarters[0], quarters[1], _MM_SHUFFLE(2, 0, 2, 0)),
        _mm256_shuffle_ps(quarters[0], quarters[1], _MM_SHUFFLE(3, 1, 3, 1)));
    return {_mm256_permutevar8x32_ps(mixed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))};
  }
  float max_lane() const {
    __m128 s = _mm_max_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static Vec keep_first(Vec a, int64_t count, Vec fill) {
    const int32_t n = static_cast<int32_t>(std::clamp<int64_t>(count, 0, 8));
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes));
    return {_mm256_blendv_ps(fill.v, a.v, keep)};
  }
};

#else  // plain arrays: the compiler vectorises the loops (NEON on aarch64)

struct Vec {
  static constexpr int kLanes = 8;
  static constexpr int kRegisters = 32;  // NEON's; the compiler decides
  float v[kLanes];

  template <class F>
  static Vec map(F f) {
    Vec r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = f(i);
    return r;
  }
  static Vec zero() { return set1(0.f); }
  static Vec set1(float x) { return map([&](int) { return x; }); }
  static Vec load(const float* p) { return map([&](int i) { return p[i]; }); }
  static Vec load(const c10::BFloat16* p) { return map([&](int i) { return float(p[i]); }); }
  static Vec load_nibbles(const uint8_t* p, bool high) {
    return map([&](int i) { return float(high ? p[i] >> 4 : p[i] & 0xF); });
  }
  static Vec load_int8(const int8_t* p) { return map([&](int i) { return float(p[i]); }); }
  void store(float* p) const { std::memcpy(p, v, sizeof v); }
  void store(c10::BFloat16* p) const {
    for (int i = 0; i < kLanes; ++i) p[i] = c10::BFloat16(v[i]);
  }
  Vec rounded_bf16() const { return map([&](int i) { return float(c10::BFloat16(v[i])); }); }

  friend Vec operator+(Vec a, Vec b) { return map([&](int i) { return a.v[i] + b.v[i]; }); }
  friend Vec operator-(Vec a, Vec b) { return map([&](int i) { return a.v[i] - b.v[i]; }); }
  friend Vec operator*(Vec a, Vec b) { return map([&](int i) { return a.v[i] * b.v[i]; }); }
  friend Vec operator/(Vec a, Vec b) { return map([&](int i) { return a.v[i] / b.v[i]; }); }
  static Vec fmadd(Vec a, Vec b, Vec c) {
    return map([&](int i) { return std::fma(a.v[i], b.v[i], c.v[i]); });
  }
  static Vec max(Vec a, Vec b) { return map([&](int i) { return std::max(a.v[i], b.v[i]); }); }
  static Vec min(Vec a, Vec b) { return map([&](int i) { return std::min(a.v[i], b.v[i]); }); }
  static Vec round(Vec a) { return map([&](int i) { return std::nearbyint(a.v[i]); }); }
  static Vec scale2(Vec a, Vec n) {
    return map([&](int i) { return std::ldexp(a.v[i], static_cast<int>(n.v[i])); });
  }
  float sum() const {  // the same pairwise tree as the vector versions
    float s[4];
    for (int i = 0; i < 4; ++i) s[i] = v[i + 4] + v[i];
    const float lo = s[2] + s[0], hi = s[3] + s[1];
    return hi + lo;
  }
  static Vec sums(const Vec* d) { return map([&](int i) { return d[i].sum(); }); }
  float max_lane() const { return *std::max_element(v, v + kLanes); }
  static Vec keep_first(Vec a, int64_t count, Vec fill) {
    return map([&](int i) { return i < count ? a.v[i] : fill.v[i]; });
  }
};

#endif

// Load/store any model dtype.
template <typename T>
inline Vec load(const T* p) { return Vec::load(p); }
template <typename T>
inline void store(T* p, Vec v) { v.store(p); }

// The value a cast to T and back would give (identity for float).
template <typename T>
inline Vec round_as(Vec v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) return v.rounded_bf16();
  return v;
}

// 2^x for x in [-126, 128): integer n and fraction f in [-0.5, 0.5], 2^f by its Taylor
// series (DEGREE 6: good to 2e-7; DEGREE 4: to 5e-5), scaled by 2^n.
template <int DEGREE = 6>
inline Vec exp2(Vec x) {
  static_assert(DEGREE == 4 || DEGREE == 6, "exp2: degree 4 or 6");
  x = Vec::max(x, Vec::set1(-126.f));
  const Vec n = Vec::round(x);
  const Vec f = x - n;
  Vec p = Vec::set1(kExp2Poly[6 - DEGREE]);
  for (int i = 7 - DEGREE; i < 7; ++i) p = Vec::fmadd(p, f, Vec::set1(kExp2Poly[i]));
  return Vec::scale2(p, n);
}

// e^x, clamped to [-87, 88] first (the float32 range)
inline Vec exp(Vec x) {
  x = Vec::max(Vec::min(x, Vec::set1(88.0f)), Vec::set1(-87.0f));
  return exp2<6>(x * Vec::set1(kLog2e));
}

}  // namespace kvscope_vec
