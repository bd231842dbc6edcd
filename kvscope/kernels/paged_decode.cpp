// Paged attention for single-token decodes on CPU.
//
// Each (sequence, kv head) pair is one unit of work: its G query heads (grouped-query
// attention) walk the sequence's block table, score every cached key, take one
// softmax, and sum the values. K/V are read in place from the paged pool — no
// gather into a contiguous copy — and all arithmetic is float32. With AVX-512 and a
// head dim that is a multiple of 16, the inner loops run 16 lanes at a time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "simd.h"

namespace {

template <typename scalar_t>
struct DecodeArgs {
  const scalar_t* q;        // [S, H, d]
  const scalar_t* k_cache;  // [blocks, block_size, kv_heads, d]
  const scalar_t* v_cache;
  const int64_t* tables;    // [S, max_blocks]
  const int64_t* lens;      // [S]
  scalar_t* out;            // [S, H, d]
  int64_t num_heads, kv_heads, head_dim, block_size, max_blocks, group;
  float scale;

  const scalar_t* row(const scalar_t* cache, int64_t seq, int64_t kv_head, int64_t t) const {
    const int64_t block = tables[seq * max_blocks + t / block_size];
    return cache + ((block * block_size + t % block_size) * kv_heads + kv_head) * head_dim;
  }
};

struct Scratch {
  std::vector<float> queries, acc, scores;
};

// scores[g, t] → softmax over t, in place
void softmax_rows(float* scores, int64_t rows, int64_t len) {
  for (int64_t g = 0; g < rows; ++g) {
    float* s = scores + g * len;
    const float peak = *std::max_element(s, s + len);
    float total = 0.f;
    int64_t t = 0;
#if defined(__AVX512F__)
    using namespace kvscope_simd;
    __m512 sum = _mm512_setzero_ps();
    const __m512 vpeak = _mm512_set1_ps(peak);
    for (; t + kLanes <= len; t += kLanes) {
      const __m512 e = exp16(_mm512_sub_ps(load16(s + t), vpeak));
      store16(s + t, e);
      sum = _mm512_add_ps(sum, e);
    }
    total = _mm512_reduce_add_ps(sum);
#endif
    for (; t < len; ++t) {
      s[t] = std::exp(s[t] - peak);
      total += s[t];
    }
    const float inv = 1.f / total;
    for (int64_t i = 0; i < len; ++i) s[i] *= inv;
  }
}

template <typename scalar_t>
void attend_scalar(const DecodeArgs<scalar_t>& a, int64_t seq, int64_t kv_head, Scratch& s) {
  const int64_t G = a.group, d = a.head_dim, context = a.lens[seq];
  for (int64_t t = 0; t < context; ++t) {
    const scalar_t* key = a.row(a.k_cache, seq, kv_head, t);
    for (int64_t g = 0; g < G; ++g) {
      float dot = 0.f;
      for (int64_t i = 0; i < d; ++i) dot += s.queries[g * d + i] * float(key[i]);
      s.scores[g * context + t] = dot;
    }
  }
  softmax_rows(s.scores.data(), G, context);
  for (int64_t t = 0; t < context; ++t) {
    const scalar_t* value = a.row(a.v_cache, seq, kv_head, t);
    for (int64_t g = 0; g < G; ++g) {
      const float p = s.scores[g * context + t];
      for (int64_t i = 0; i < d; ++i) s.acc[g * d + i] += p * float(value[i]);
    }
  }
}

#if defined(__AVX512F__)
// CHUNKS = head_dim / 16, a compile-time constant so each head's query and output
// accumulators live in registers; G_MAX bounds the group so they fit. The context is
// walked block by block (no division per token), and each key and value row is loaded
// once for all G query heads of its kv head.
template <int CHUNKS, int G, typename scalar_t>
void attend_simd(const DecodeArgs<scalar_t>& a, int64_t seq, int64_t kv_head, Scratch& s) {
  using namespace kvscope_simd;
  const int64_t d = a.head_dim, context = a.lens[seq], bs = a.block_size;
  const int64_t row_stride = a.kv_heads * d;
  const int64_t* table = a.tables + seq * a.max_blocks;
  __m512 query[G][CHUNKS];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < CHUNKS; ++c) query[g][c] = load16(s.queries.data() + g * d + c * kLanes);
  float* scores = s.scores.data();
  for (int64_t start = 0; start < context; start += bs) {
    const int64_t n = std::min(bs, context - start);
    const scalar_t* key = a.k_cache + (table[start / bs] * bs * a.kv_heads + kv_head) * d;
    for (int64_t t = 0; t < n; ++t, key += row_stride) {
      __m512 k[CHUNKS];
      for (int c = 0; c < CHUNKS; ++c) k[c] = load16(key + c * kLanes);
      for (int g = 0; g < G; ++g) {
        __m512 dot = _mm512_mul_ps(query[g][0], k[0]);
        for (int c = 1; c < CHUNKS; ++c) dot = _mm512_fmadd_ps(query[g][c], k[c], dot);
        scores[g * context + start + t] = _mm512_reduce_add_ps(dot);
      }
    }
  }
  softmax_rows(scores, G, context);
  __m512 acc[G][CHUNKS];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < CHUNKS; ++c) acc[g][c] = _mm512_setzero_ps();
  for (int64_t start = 0; start < context; start += bs) {
    const int64_t n = std::min(bs, context - start);
    const scalar_t* value = a.v_cache + (table[start / bs] * bs * a.kv_heads + kv_head) * d;
    for (int64_t t = 0; t < n; ++t, value += row_stride) {
      __m512 v[CHUNKS];
      for (int c = 0; c < CHUNKS; ++c) v[c] = load16(value + c * kLanes);
      for (int g = 0; g < G; ++g) {
        const __m512 p = _mm512_set1_ps(scores[g * context + start + t]);
        for (int c = 0; c < CHUNKS; ++c) acc[g][c] = _mm512_fmadd_ps(p, v[c], acc[g][c]);
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < CHUNKS; ++c) store16(s.acc.data() + g * d + c * kLanes, acc[g][c]);
}

template <int CHUNKS, typename scalar_t>
bool attend_group(const DecodeArgs<scalar_t>& a, int64_t seq, int64_t kv_head, Scratch& s) {
  switch (a.group) {
    case 1: attend_simd<CHUNKS, 1>(a, seq, kv_head, s); return true;
    case 2: attend_simd<CHUNKS, 2>(a, seq, kv_head, s); return true;
    case 3: attend_simd<CHUNKS, 3>(a, seq, kv_head, s); return true;
    case 4: attend_simd<CHUNKS, 4>(a, seq, kv_head, s); return true;
    default: return false;
  }
}

// true when a register-resident specialisation exists for this head dim
template <typename scalar_t>
bool attend_fast(const DecodeArgs<scalar_t>& a, int64_t seq, int64_t kv_head, Scratch& s) {
  switch (a.head_dim) {
    case 64: return attend_group<4>(a, seq, kv_head, s);
    case 128: return attend_group<8>(a, seq, kv_head, s);
    default: return false;
  }
}
#endif

template <typename scalar_t>
void decode_attention_impl(const DecodeArgs<scalar_t>& a, int64_t num_seqs) {
  at::parallel_for(0, num_seqs * a.kv_heads, 1, [&](int64_t begin, int64_t end) {
    const int64_t G = a.group, d = a.head_dim;
    Scratch s;
    s.queries.resize(G * d);
    s.acc.resize(G * d);
    for (int64_t work = begin; work < end; ++work) {
      const int64_t seq = work / a.kv_heads, kv_head = work % a.kv_heads;
      const int64_t first_head = seq * a.num_heads + kv_head * G;
      for (int64_t i = 0; i < G * d; ++i) s.queries[i] = float(a.q[first_head * d + i]) * a.scale;
      s.scores.assign(G * a.lens[seq], 0.f);
      std::fill(s.acc.begin(), s.acc.end(), 0.f);
#if defined(__AVX512F__)
      if (!attend_fast(a, seq, kv_head, s)) attend_scalar(a, seq, kv_head, s);
#else
      attend_scalar(a, seq, kv_head, s);
#endif
      for (int64_t i = 0; i < G * d; ++i) a.out[first_head * d + i] = scalar_t(s.acc[i]);
    }
  });
}

}  // namespace

// q [S, H, d]; k_cache, v_cache [num_blocks, block_size, kv_heads, d]; block_tables
// [S, max_blocks] int64; context_lens [S] int64 → out [S, H, d]
at::Tensor paged_decode_attention(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                                  at::Tensor block_tables, at::Tensor context_lens,
                                  double scale) {
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "paged_decode_attention needs contiguous tensors");
  TORCH_CHECK(block_tables.is_contiguous() && context_lens.is_contiguous(),
              "block tables and context lengths must be contiguous");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type(), "q and the KV cache differ in dtype");
  TORCH_CHECK(q.size(1) % k_cache.size(2) == 0, "heads must be a multiple of kv heads");
  auto out = at::empty_like(q);
  KVSCOPE_DISPATCH(q.scalar_type(), "paged_decode", [&] {
    DecodeArgs<scalar_t> args{
        q.data_ptr<scalar_t>(), k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(),
        block_tables.data_ptr<int64_t>(), context_lens.data_ptr<int64_t>(),
        out.data_ptr<scalar_t>(), q.size(1), k_cache.size(2), q.size(2), k_cache.size(1),
        block_tables.size(1), q.size(1) / k_cache.size(2), static_cast<float>(scale)};
    decode_attention_impl(args, q.size(0));
  });
  return out;
}
