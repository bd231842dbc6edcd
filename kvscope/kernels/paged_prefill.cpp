// Paged attention for all prefill chunks of a step on CPU, in one call.
//
// A chunk is a run of query rows of one sequence at positions [start, start + n).
// Its keys are that sequence's positions [0, start + n), read from the paged pool
// through its block table (the chunk's own new K/V are already written there), and
// the query at position p sees the keys at positions 0..p.
//
// Flash-attention style: the work is cut into units of (chunk, kv head, query tile).
// A unit walks its keys in tiles of 32 with an online softmax (running max and sum
// per row), so no score matrix is ever materialised, and the G query heads that
// share the kv head are rows of the same unit, so each loaded key/value tile serves
// all of them. Before that, one pass copies each chunk's context out of the pool
// into tiles laid out for the dot products: once per call and kv head, not once per
// query tile.
//
//   * bfloat16 with AVX512-BF16: `_mm512_dpbf16_ps` multiplies pairs of bf16 and
//     accumulates in float32. Key tiles are [d/2][32 keys][2], so one instruction
//     scores 16 keys against a broadcast pair of query elements; value tiles are
//     [16 key pairs][d][2], so one instruction adds two keys' weighted values into 16
//     output columns. The probabilities are rounded to bf16 for that product and the
//     row sums add up the same rounded values, so each output is an exact weighted
//     mean of the values. Queries are read in place.
//   * float32 (and bfloat16 without AVX512-BF16): the same loop with float32 FMAs on
//     the build's vectors (vec.h: 16 lanes with AVX-512, 8 with AVX2), key tiles
//     transposed to [d][32 keys], value tiles [32 keys][d].
//   * for a head dim other than 64 or 128: a scalar loop, one query row at a time.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "dispatch.h"
#include "vec.h"

namespace {

template <typename scalar_t>
struct PrefillArgs {
  const scalar_t* q;          // [T, H, d], rows q_stride elements apart
  const scalar_t* k_cache;    // [blocks, block_size, kv_heads, d]
  const scalar_t* v_cache;
  const int64_t* tables;      // [C, max_blocks]
  const int64_t* starts;      // [C + 1]: chunk c is rows [starts[c], starts[c + 1])
  const int64_t* positions;   // [C]: position of each chunk's first row
  scalar_t* out;              // [T, H, d]
  int64_t q_stride, num_heads, kv_heads, head_dim, block_size, max_blocks, group, chunks;
  float scale;

  int64_t length(int64_t c) const { return starts[c + 1] - starts[c]; }
  int64_t context(int64_t c) const { return positions[c] + length(c); }
  const scalar_t* row(const scalar_t* cache, int64_t c, int64_t kv_head, int64_t t) const {
    const int64_t block = tables[c * max_blocks + t / block_size];
    return cache + ((block * block_size + t % block_size) * kv_heads + kv_head) * head_dim;
  }
  const scalar_t* query(int64_t r, int64_t head) const {
    return q + r * q_stride + head * head_dim;
  }
  scalar_t* output(int64_t r, int64_t head) const {
    return out + (r * num_heads + head) * head_dim;
  }
};

// -- scalar path -----------------------------------------------------------------

template <typename scalar_t>
void prefill_scalar(const PrefillArgs<scalar_t>& a) {
  const int64_t first = a.starts[0], rows = a.starts[a.chunks] - first;
  at::parallel_for(0, rows * a.kv_heads, 1, [&](int64_t begin, int64_t end) {
    const int64_t d = a.head_dim, G = a.group;
    std::vector<float> query(d), acc(d), scores;
    for (int64_t work = begin; work < end; ++work) {
      const int64_t r = first + work / a.kv_heads, kv_head = work % a.kv_heads;
      const int64_t c = std::upper_bound(a.starts, a.starts + a.chunks + 1, r) - a.starts - 1;
      const int64_t visible = a.positions[c] + (r - a.starts[c]) + 1;
      scores.resize(visible);
      for (int64_t g = 0; g < G; ++g) {
        const int64_t head = kv_head * G + g;
        const scalar_t* qp = a.query(r, head);
        for (int64_t i = 0; i < d; ++i) query[i] = float(qp[i]);
        float peak = -std::numeric_limits<float>::infinity();
        for (int64_t t = 0; t < visible; ++t) {
          const scalar_t* key = a.row(a.k_cache, c, kv_head, t);
          float dot = 0.f;
          for (int64_t i = 0; i < d; ++i) dot += query[i] * float(key[i]);
          scores[t] = dot * a.scale;
          peak = std::max(peak, scores[t]);
        }
        float total = 0.f;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t t = 0; t < visible; ++t) {
          const float p = std::exp(scores[t] - peak);
          total += p;
          const scalar_t* value = a.row(a.v_cache, c, kv_head, t);
          for (int64_t i = 0; i < d; ++i) acc[i] += p * float(value[i]);
        }
        scalar_t* o = a.output(r, head);
        for (int64_t i = 0; i < d; ++i) o[i] = scalar_t(acc[i] / total);
      }
    }
  });
}

using kvscope_vec::Vec;

constexpr int64_t kKeyTile = 32;    // keys per tile
constexpr int kKeyVecs = kKeyTile / Vec::kLanes;  // vectors of scores per tile row
constexpr int64_t kUnitRows = 48;   // query rows (positions x heads) a unit aims for
// rows scored together, sharing each key load: as many as the registers hold
constexpr int kRowBlock = Vec::kLanes == 16 ? 6 : 3;
// the packed copy of the contexts, per call: chunks are taken in groups under this
constexpr int64_t kPackedBytes = int64_t(32) << 20;
constexpr float kLog2e = 1.4426950408889634f;

// One step of the online softmax for M rows over a key tile. s holds the raw scores
// of 32 keys per row; keys at or past visible[r] are masked out when `masked`.
// Updates the running max (raw units), leaves the probabilities
// 2^(scale * (s - max)) in s (zero where masked), and writes each row's factor for
// rescaling its older sums. `scale` includes log2(e). DEGREE is that of exp2's series
// (vec.h): 6 for float32, 4 where probabilities are rounded to bf16 anyway.
template <int DEGREE, int M>
inline void online_softmax(Vec (&s)[M][kKeyVecs], const int64_t* visible, bool masked,
                           float scale, float* running_max, float* alpha) {
  constexpr int L = Vec::kLanes;
  alignas(64) float old_max[16] = {}, new_max[16] = {};
  const Vec neg_inf = Vec::set1(-std::numeric_limits<float>::infinity());
#pragma GCC unroll 8
  for (int r = 0; r < M; ++r) {
    Vec tile_max = neg_inf;
    for (int v = 0; v < kKeyVecs; ++v) {
      if (masked) s[r][v] = Vec::keep_first(s[r][v], visible[r] - v * L, neg_inf);
      tile_max = Vec::max(tile_max, s[r][v]);
    }
    old_max[r] = running_max[r];
    new_max[r] = std::max(old_max[r], tile_max.max_lane());
    running_max[r] = new_max[r];
  }
  const Vec vscale = Vec::set1(scale);
  // the first tile has max -inf before it: a factor of ~0 for the (zero) sums
  for (int i = 0; i < 16; i += L)
    kvscope_vec::exp2<DEGREE>((Vec::load(old_max + i) - Vec::load(new_max + i)) * vscale)
        .store(alpha + i);
#pragma GCC unroll 8
  for (int r = 0; r < M; ++r) {
    const Vec peak = Vec::set1(new_max[r] * scale);
    for (int v = 0; v < kKeyVecs; ++v) {
      s[r][v] = kvscope_vec::exp2<DEGREE>(Vec::fmadd(s[r][v], vscale, Vec::zero() - peak));
      if (masked) s[r][v] = Vec::keep_first(s[r][v], visible[r] - v * L, Vec::zero());
    }
  }
}

// Running state of a unit's rows: output accumulators [R][D], max [R], and the sum
// of probabilities [R][16] (kept as Vec::kLanes partial sums, reduced at the end).
struct RowState {
  float* acc;
  float* max;
  float* sum;
};

#if defined(__AVX512BF16__)
inline int32_t bf16_pair(const c10::BFloat16* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// bfloat16 with AVX512-BF16 dot products
template <int D>
struct Bf16Math {
  using scalar_t = c10::BFloat16;
  using packed_t = uint32_t;  // a pair of bf16
  using query_t = c10::BFloat16;
  static constexpr int64_t kTileWords = D / 2 * kKeyTile;

  // keys → [D/2][32][2], values → [16][D][2]; past the context: zeros
  static void pack(const PrefillArgs<scalar_t>& a, int64_t c, int64_t kv_head, int64_t k0,
                   packed_t* kt, packed_t* vt) {
    const int64_t valid = std::min(kKeyTile, a.context(c) - k0);
    for (int64_t k = 0; k < kKeyTile; ++k) {
      packed_t pairs[D / 2] = {};
      if (k < valid) std::memcpy(pairs, a.row(a.k_cache, c, kv_head, k0 + k), sizeof pairs);
      for (int j = 0; j < D / 2; ++j) kt[j * kKeyTile + k] = pairs[j];
    }
    const __m256i zero = _mm256_setzero_si256();
    for (int64_t m = 0; m < kKeyTile / 2; ++m) {
      const scalar_t* lo = 2 * m < valid ? a.row(a.v_cache, c, kv_head, k0 + 2 * m) : nullptr;
      const scalar_t* hi = 2 * m + 1 < valid ? a.row(a.v_cache, c, kv_head, k0 + 2 * m + 1)
                                             : nullptr;
      for (int i = 0; i < D; i += 16) {
        const __m256i l = lo ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo + i)) : zero;
        const __m256i h = hi ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi + i)) : zero;
        const __m512i both = _mm512_or_si512(_mm512_cvtepu16_epi32(l),
                                             _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        _mm512_storeu_si512(vt + m * D + i, both);
      }
    }
  }

  // Queries are read where they are.
  static const query_t* queries(const PrefillArgs<scalar_t>& a, int64_t r, int64_t head,
                                query_t* /*scratch*/) {
    return a.query(r, head);
  }

  template <int M>
  static void block(const query_t* const* q, const packed_t* kt, const packed_t* vt,
                    const int64_t* visible, bool masked, float scale, const RowState& st) {
    static_assert(kKeyVecs == 2, "AVX512-BF16 tiles are two 16-lane vectors");
    Vec s[M][2];
    for (int r = 0; r < M; ++r) s[r][0] = s[r][1] = Vec::zero();
    if (masked && visible[M - 1] <= 16) {  // on the diagonal: the second half is masked
      for (int j = 0; j < D / 2; ++j) {
        const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kt + j * kKeyTile);
        for (int r = 0; r < M; ++r) {
          const __m512bh pair = (__m512bh)_mm512_set1_epi32(bf16_pair(q[r] + 2 * j));
          s[r][0].v = _mm512_dpbf16_ps(s[r][0].v, pair, k0);
        }
      }
    } else {
      for (int j = 0; j < D / 2; ++j) {
        const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kt + j * kKeyTile);
        const __m512bh k1 = (__m512bh)_mm512_loadu_si512(kt + j * kKeyTile + 16);
        for (int r = 0; r < M; ++r) {
          const __m512bh pair = (__m512bh)_mm512_set1_epi32(bf16_pair(q[r] + 2 * j));
          s[r][0].v = _mm512_dpbf16_ps(s[r][0].v, pair, k0);
          s[r][1].v = _mm512_dpbf16_ps(s[r][1].v, pair, k1);
        }
      }
    }
    alignas(64) float alpha[16];
    online_softmax<4, M>(s, visible, masked, scale, st.max, alpha);

    alignas(64) uint32_t probs[M][16];  // 32 bf16 per row: key pairs
    const __m512bh ones = (__m512bh)_mm512_set1_epi32(0x3F803F80);
    for (int r = 0; r < M; ++r) {
      const __m512bh p = _mm512_cvtne2ps_pbh(s[r][1].v, s[r][0].v);
      _mm512_store_si512(probs[r], (__m512i)p);
      const __m512 sum = _mm512_mul_ps(_mm512_loadu_ps(st.sum + r * 16), _mm512_set1_ps(alpha[r]));
      _mm512_storeu_ps(st.sum + r * 16, _mm512_dpbf16_ps(sum, p, ones));
    }
    int64_t pairs = kKeyTile / 2;
    if (masked) pairs = std::min<int64_t>(pairs, (visible[M - 1] + 1) / 2);
    constexpr int kCols = D / 16 < 4 ? D / 16 : 4;  // output vectors per row in registers
    for (int c0 = 0; c0 < D / 16; c0 += kCols) {
      __m512 acc[M][kCols];
      for (int r = 0; r < M; ++r) {
        const __m512 factor = _mm512_set1_ps(alpha[r]);
        for (int c = 0; c < kCols; ++c)
          acc[r][c] = _mm512_mul_ps(_mm512_loadu_ps(st.acc + r * D + (c0 + c) * 16), factor);
      }
      for (int64_t m = 0; m < pairs; ++m) {
        __m512bh v[kCols];
        for (int c = 0; c < kCols; ++c)
          v[c] = (__m512bh)_mm512_loadu_si512(vt + m * D + (c0 + c) * 16);
        for (int r = 0; r < M; ++r) {
          const __m512bh p = (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(probs[r][m]));
          for (int c = 0; c < kCols; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], p, v[c]);
        }
      }
      for (int r = 0; r < M; ++r)
        for (int c = 0; c < kCols; ++c) _mm512_storeu_ps(st.acc + r * D + (c0 + c) * 16, acc[r][c]);
    }
  }
};
#endif  // __AVX512BF16__

// float32 FMAs (float32, or bfloat16 widened to float32), on any vector width
template <typename T, int D>
struct FloatMath {
  using scalar_t = T;
  using packed_t = float;
  using query_t = float;
  static constexpr int L = Vec::kLanes;
  static constexpr int64_t kTileWords = D * kKeyTile;

  // keys → [D][32], values → [32][D]; past the context: zeros
  static void pack(const PrefillArgs<scalar_t>& a, int64_t c, int64_t kv_head, int64_t k0,
                   packed_t* kt, packed_t* vt) {
    const int64_t valid = std::min(kKeyTile, a.context(c) - k0);
    for (int64_t k = 0; k < kKeyTile; ++k) {
      if (k < valid) {
        const scalar_t* key = a.row(a.k_cache, c, kv_head, k0 + k);
        const scalar_t* value = a.row(a.v_cache, c, kv_head, k0 + k);
        for (int i = 0; i < D; ++i) kt[i * kKeyTile + k] = float(key[i]);
        for (int i = 0; i < D; i += L) Vec::load(value + i).store(vt + k * D + i);
      } else {
        for (int i = 0; i < D; ++i) kt[i * kKeyTile + k] = 0.f;
        std::fill(vt + k * D, vt + (k + 1) * D, 0.f);
      }
    }
  }

  // float32 queries in place; bf16 ones widened into the scratch row
  static const query_t* queries(const PrefillArgs<scalar_t>& a, int64_t r, int64_t head,
                                query_t* scratch) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      return a.query(r, head);
    } else {
      const scalar_t* src = a.query(r, head);
      for (int i = 0; i < D; i += L) Vec::load(src + i).store(scratch + i);
      return scratch;
    }
  }

  // raw scores of the first NV key vectors of the tile; the rest are left at zero
  template <int M, int NV>
  static void score(const query_t* const* q, const packed_t* kt, Vec (&s)[M][kKeyVecs]) {
    for (int i = 0; i < D; ++i) {
      Vec k[NV];
      for (int v = 0; v < NV; ++v) k[v] = Vec::load(kt + i * kKeyTile + v * L);
      for (int r = 0; r < M; ++r) {
        const Vec qi = Vec::set1(q[r][i]);
        for (int v = 0; v < NV; ++v) s[r][v] = Vec::fmadd(qi, k[v], s[r][v]);
      }
    }
  }

  template <int M>
  static void block(const query_t* const* q, const packed_t* kt, const packed_t* vt,
                    const int64_t* visible, bool masked, float scale, const RowState& st) {
    Vec s[M][kKeyVecs];
    for (int r = 0; r < M; ++r)
      for (int v = 0; v < kKeyVecs; ++v) s[r][v] = Vec::zero();
    if (masked && visible[M - 1] <= kKeyTile / 2) {  // on the diagonal: the second half is masked
      score<M, kKeyVecs / 2>(q, kt, s);
    } else {
      score<M, kKeyVecs>(q, kt, s);
    }
    alignas(64) float alpha[16];
    online_softmax<6, M>(s, visible, masked, scale, st.max, alpha);

    alignas(64) float probs[M][kKeyTile];
    for (int r = 0; r < M; ++r) {
      Vec tile_sum = s[r][0];
      for (int v = 0; v < kKeyVecs; ++v) s[r][v].store(probs[r] + v * L);
      for (int v = 1; v < kKeyVecs; ++v) tile_sum = tile_sum + s[r][v];
      (Vec::load(st.sum + r * 16) * Vec::set1(alpha[r]) + tile_sum).store(st.sum + r * 16);
    }
    int64_t keys = kKeyTile;
    if (masked) keys = std::min<int64_t>(keys, visible[M - 1]);
    constexpr int kCols = D / L < 4 ? D / L : 4;  // output vectors per row in registers
    for (int c0 = 0; c0 < D / L; c0 += kCols) {
      Vec acc[M][kCols];
      for (int r = 0; r < M; ++r) {
        const Vec factor = Vec::set1(alpha[r]);
        for (int c = 0; c < kCols; ++c)
          acc[r][c] = Vec::load(st.acc + r * D + (c0 + c) * L) * factor;
      }
      for (int64_t k = 0; k < keys; ++k) {
        Vec v[kCols];
        for (int c = 0; c < kCols; ++c) v[c] = Vec::load(vt + k * D + (c0 + c) * L);
        for (int r = 0; r < M; ++r) {
          const Vec p = Vec::set1(probs[r][k]);
          for (int c = 0; c < kCols; ++c) acc[r][c] = Vec::fmadd(p, v[c], acc[r][c]);
        }
      }
      for (int r = 0; r < M; ++r)
        for (int c = 0; c < kCols; ++c) acc[r][c].store(st.acc + r * D + (c0 + c) * L);
    }
  }
};

// A reusable buffer for the packed tiles, kept by the calling thread: no page faults
// of a fresh allocation on every layer.
template <typename T>
T* tile_buffer(int64_t count) {
  thread_local std::vector<char> bytes;
  const size_t need = static_cast<size_t>(count) * sizeof(T) + 64;
  if (bytes.size() < need) bytes.resize(need);
  const auto address = reinterpret_cast<uintptr_t>(bytes.data());
  return reinterpret_cast<T*>((address + 63) & ~uintptr_t(63));
}

struct Unit {
  int64_t chunk, kv_head, first, count;  // query rows [first, first + count) of the chunk
  int64_t cost;
};

// Math::block<m> for a run-time m <= M
template <class Math, int M>
inline void run_block(int m, const typename Math::query_t* const* q,
                      const typename Math::packed_t* kt, const typename Math::packed_t* vt,
                      const int64_t* visible, bool masked, float scale, const RowState& st) {
  if constexpr (M > 1) {
    if (m < M) return run_block<Math, M - 1>(m, q, kt, vt, visible, masked, scale, st);
  }
  Math::template block<M>(q, kt, vt, visible, masked, scale, st);
}

// Chunks [c_begin, c_end): pack their contexts, then run their units.
template <class Math, int D>
void prefill_tiled(const PrefillArgs<typename Math::scalar_t>& a, int64_t c_begin,
                   int64_t c_end) {
  using packed_t = typename Math::packed_t;
  using query_t = typename Math::query_t;
  constexpr int64_t E = Math::kTileWords;
  const int64_t KVH = a.kv_heads, G = a.group;

  // 1) each chunk's context, per kv head, as packed key and value tiles
  std::vector<int64_t> first_tile(c_end - c_begin + 1, 0);  // of chunk c_begin + i
  for (int64_t c = c_begin; c < c_end; ++c)
    first_tile[c - c_begin + 1] = first_tile[c - c_begin] + (a.context(c) + kKeyTile - 1) / kKeyTile;
  const int64_t tiles = first_tile.back();
  packed_t* packed = tile_buffer<packed_t>(tiles * KVH * 2 * E);
  auto key_tile = [&](int64_t c, int64_t k0, int64_t kv_head) {
    return packed + ((first_tile[c - c_begin] + k0 / kKeyTile) * KVH + kv_head) * 2 * E;
  };
  at::parallel_for(0, tiles * KVH, 4, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t tile = w / KVH, kv_head = w % KVH;
      const int64_t i = std::upper_bound(first_tile.begin(), first_tile.end(), tile) -
                        first_tile.begin() - 1;
      packed_t* kt = packed + (tile * KVH + kv_head) * 2 * E;
      Math::pack(a, c_begin + i, kv_head, (tile - first_tile[i]) * kKeyTile, kt, kt + E);
    }
  });

  // 2) units of (chunk, kv head, query tile), costliest first, taken from a shared counter
  const int64_t tile_rows = std::max<int64_t>(1, kUnitRows / G);
  std::vector<Unit> units;
  for (int64_t c = c_begin; c < c_end; ++c)
    for (int64_t first = 0; first < a.length(c); first += tile_rows) {
      const int64_t count = std::min(tile_rows, a.length(c) - first);
      for (int64_t h = 0; h < KVH; ++h)
        units.push_back({c, h, first, count, count * (a.positions[c] + first + count)});
    }
  std::stable_sort(units.begin(), units.end(),
                   [](const Unit& x, const Unit& y) { return x.cost > y.cost; });
  std::atomic<int64_t> next{0};
  const float scale = a.scale * kLog2e;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), units.size());
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    const int64_t max_rows = tile_rows * G;
    std::vector<float> acc(max_rows * D), peak(max_rows), sum(max_rows * 16);
    std::vector<query_t> query_scratch(max_rows * D);
    std::vector<const query_t*> q(max_rows);
    for (int64_t u = next++; u < static_cast<int64_t>(units.size()); u = next++) {
      const Unit& unit = units[u];
      const int64_t rows = unit.count * G, base = a.positions[unit.chunk] + unit.first;
      const int64_t row0 = a.starts[unit.chunk] + unit.first;
      for (int64_t r = 0; r < rows; ++r)
        q[r] = Math::queries(a, row0 + r / G, unit.kv_head * G + r % G,
                             query_scratch.data() + r * D);
      std::fill(acc.begin(), acc.begin() + rows * D, 0.f);
      std::fill(peak.begin(), peak.begin() + rows, -std::numeric_limits<float>::infinity());
      std::fill(sum.begin(), sum.begin() + rows * 16, 0.f);
      const int64_t key_end = base + unit.count;  // keys [0, key_end)
      for (int64_t k0 = 0; k0 < key_end; k0 += kKeyTile) {
        const packed_t* kt = key_tile(unit.chunk, k0, unit.kv_head);
        // rows at positions before k0 see none of this tile
        for (int64_t r = std::max<int64_t>(0, k0 - base) * G; r < rows; r += kRowBlock) {
          const int m = static_cast<int>(std::min<int64_t>(kRowBlock, rows - r));
          int64_t visible[kRowBlock];
          for (int i = 0; i < m; ++i) visible[i] = base + (r + i) / G - k0 + 1;
          const bool masked = visible[0] < kKeyTile;
          const RowState st{acc.data() + r * D, peak.data() + r, sum.data() + r * 16};
          const query_t* const* qr = q.data() + r;
          run_block<Math, kRowBlock>(m, qr, kt, kt + E, visible, masked, scale, st);
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const Vec inv = Vec::set1(1.f / Vec::load(&sum[r * 16]).sum());
        auto* o = a.output(row0 + r / G, unit.kv_head * G + r % G);
        for (int i = 0; i < D; i += Vec::kLanes)
          (Vec::load(&acc[r * D + i]) * inv).store(o + i);
      }
    }
  });
}

// All chunks, in groups whose packed contexts stay under kPackedBytes (a chunk
// bigger than that alone is one group).
template <class Math, int D>
void prefill_grouped(const PrefillArgs<typename Math::scalar_t>& a) {
  const int64_t tile_bytes = a.kv_heads * 2 * Math::kTileWords * sizeof(typename Math::packed_t);
  const int64_t budget = std::max<int64_t>(1, kPackedBytes / tile_bytes);  // in key tiles
  auto tiles = [&](int64_t c) { return (a.context(c) + kKeyTile - 1) / kKeyTile; };
  for (int64_t c0 = 0, c1; c0 < a.chunks; c0 = c1) {
    int64_t used = tiles(c0);
    for (c1 = c0 + 1; c1 < a.chunks && used + tiles(c1) <= budget; ++c1) used += tiles(c1);
    prefill_tiled<Math, D>(a, c0, c1);
  }
}

template <int D, typename scalar_t>
void prefill_simd(const PrefillArgs<scalar_t>& a) {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    prefill_grouped<Bf16Math<D>, D>(a);
    return;
  }
#endif
  prefill_grouped<FloatMath<scalar_t, D>, D>(a);
}

template <typename scalar_t>
void prefill_attention_impl(const PrefillArgs<scalar_t>& a) {
  switch (a.head_dim) {
    case 64: prefill_simd<64>(a); return;
    case 128: prefill_simd<128>(a); return;
    default: break;
  }
  prefill_scalar(a);
}

}  // namespace

// q [T, H, d] (heads contiguous in a row; rows may be further apart);
// k_cache, v_cache [num_blocks, block_size, kv_heads, d]; block_tables [C, max_blocks]
// int64; query_starts [C + 1] int64: chunk c is rows [query_starts[c],
// query_starts[c + 1]) of q; start_positions [C] int64: the position of each chunk's
// first row → out [T, H, d]. Rows outside every chunk (decodes in front) are zero.
at::Tensor paged_prefill_attention(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                                   at::Tensor block_tables, at::Tensor query_starts,
                                   at::Tensor start_positions, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              "paged_prefill_attention: q [T, H, d], caches [blocks, block_size, kv_heads, d]");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() &&
                  q.scalar_type() == v_cache.scalar_type(),
              "q and the KV cache differ in dtype");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "the KV cache must be contiguous");
  TORCH_CHECK(scale > 0, "paged_prefill_attention: scale must be positive");
  if (q.stride(2) != 1 || q.stride(1) != q.size(2)) q = q.contiguous();
  const int64_t T = q.size(0), H = q.size(1), d = q.size(2);
  const int64_t blocks = k_cache.size(0), block_size = k_cache.size(1), kv_heads = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == d && H % kv_heads == 0, "head shapes do not match");
  for (const auto& t : {block_tables, query_starts, start_positions})
    TORCH_CHECK(t.scalar_type() == at::kLong && t.is_contiguous(), "index tensors must be contiguous int64");
  const int64_t C = start_positions.numel();
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == C && query_starts.numel() == C + 1,
              "block_tables [C, max_blocks], query_starts [C + 1], start_positions [C]");
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* starts = query_starts.data_ptr<int64_t>();
  const int64_t* positions = start_positions.data_ptr<int64_t>();
  const int64_t max_blocks = block_tables.size(1);
  TORCH_CHECK(starts[0] >= 0 && starts[C] <= T, "query_starts out of range");
  for (int64_t c = 0; c < C; ++c) {
    TORCH_CHECK(starts[c] <= starts[c + 1] && positions[c] >= 0, "bad chunk ", c);
    const int64_t needed = (positions[c] + starts[c + 1] - starts[c] + block_size - 1) / block_size;
    TORCH_CHECK(needed <= max_blocks, "chunk ", c, " has more context than its block table");
    for (int64_t b = 0; b < needed; ++b)
      TORCH_CHECK(tables[c * max_blocks + b] >= 0 && tables[c * max_blocks + b] < blocks,
                  "block id out of range in chunk ", c);
  }

  auto out = at::empty({T, H, d}, q.options());
  if (starts[0] > 0) out.narrow(0, 0, starts[0]).zero_();
  if (starts[C] < T) out.narrow(0, starts[C], T - starts[C]).zero_();
  KVSCOPE_DISPATCH(q.scalar_type(), "paged_prefill", [&] {
    PrefillArgs<scalar_t> args{q.data_ptr<scalar_t>(), k_cache.data_ptr<scalar_t>(),
                               v_cache.data_ptr<scalar_t>(), tables, starts, positions,
                               out.data_ptr<scalar_t>(), q.stride(0), H, kv_heads, d,
                               block_size, max_blocks, H / kv_heads, C,
                               static_cast<float>(scale)};
    prefill_attention_impl(args);
  });
  return out;
}
