// Paged attention for single-token decodes on CPU.
//
// Each (sequence, kv head) pair is one unit of work: its G query heads (grouped-query
// attention) walk the sequence's block table, score every cached key, take one
// softmax, and sum the values. K/V are read in place from the paged pool — no
// gather into a contiguous copy — and all arithmetic is float32. For head dims 64 and
// 128 the inner loops run a vector (vec.h: 16 lanes with AVX-512, 8 with AVX2) at a
// time, with each head's query and output in registers. A sequence's result depends on
// its own query and cache only, never on the rest of the batch.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "dispatch.h"
#include "vec.h"

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
};

struct Scratch {
  std::vector<float> queries, acc, scores;
  std::vector<const void*> rows;  // a kv head's cached rows, in position order
  int64_t stride = 0;  // floats from one head's scores to the next: whole vectors
};

using kvscope_vec::Vec;

// One kv head's cached rows of a sequence, in position order, through its block table:
// a pointer that steps a row at a time and jumps at block ends (no division per row).
template <typename scalar_t>
class Rows {
 public:
  Rows(const DecodeArgs<scalar_t>& a, const scalar_t* cache, int64_t seq, int64_t kv_head)
      : cache_(cache + kv_head * a.head_dim), table_(a.tables + seq * a.max_blocks),
        block_size_(a.block_size), row_stride_(a.kv_heads * a.head_dim),
        block_stride_(a.block_size * row_stride_) {}

  const scalar_t* next() {
    if (left_ == 0) {
      row_ = cache_ + table_[block_++] * block_stride_;
      left_ = block_size_;
    }
    --left_;
    const scalar_t* here = row_;
    row_ += row_stride_;
    return here;
  }

 private:
  const scalar_t* cache_;
  const int64_t* table_;
  int64_t block_size_, row_stride_, block_stride_;
  const scalar_t* row_ = nullptr;
  int64_t left_ = 0, block_ = 0;
};

// Rows, with each row's cache lines requested kAhead rows before it is handed out:
// blocks lie anywhere in the pool, so the hardware prefetchers lose the stream at every
// block's end.
template <typename scalar_t>
class PrefetchedRows {
 public:
  static constexpr int64_t kAhead = 8;

  PrefetchedRows(const DecodeArgs<scalar_t>& a, const scalar_t* cache, int64_t seq,
                 int64_t kv_head)
      : rows_(a, cache, seq, kv_head), ahead_(a, cache, seq, kv_head),
        left_ahead_(a.lens[seq]), row_bytes_(a.head_dim * int64_t(sizeof(scalar_t))) {
    for (int64_t i = 0; i < kAhead; ++i) fetch_ahead();
  }

  const scalar_t* next() {
    fetch_ahead();
    return rows_.next();
  }

 private:
  void fetch_ahead() {
    if (left_ahead_ == 0) return;
    --left_ahead_;
    const char* row = reinterpret_cast<const char*>(ahead_.next());
    for (int64_t line = 0; line < row_bytes_; line += 64) __builtin_prefetch(row + line, 0, 3);
  }

  Rows<scalar_t> rows_, ahead_;
  int64_t left_ahead_, row_bytes_;
};

// scores[g, t] → softmax over t < len, in place
void softmax_rows(float* scores, int64_t rows, int64_t len, int64_t stride) {
  constexpr int L = Vec::kLanes;
  for (int64_t g = 0; g < rows; ++g) {
    float* s = scores + g * stride;
    Vec vpeak = Vec::set1(-std::numeric_limits<float>::infinity());
    int64_t t = 0;
    for (; t + L <= len; t += L) vpeak = Vec::max(vpeak, Vec::load(s + t));
    float peak = vpeak.max_lane();
    for (; t < len; ++t) peak = std::max(peak, s[t]);
    Vec sum = Vec::zero();
    vpeak = Vec::set1(peak);
    for (t = 0; t + L <= len; t += L) {
      const Vec e = kvscope_vec::exp(Vec::load(s + t) - vpeak);
      e.store(s + t);
      sum = sum + e;
    }
    float total = sum.sum();
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
  Rows<scalar_t> keys(a, a.k_cache, seq, kv_head), values(a, a.v_cache, seq, kv_head);
  for (int64_t t = 0; t < context; ++t) {
    const scalar_t* key = keys.next();
    for (int64_t g = 0; g < G; ++g) {
      float dot = 0.f;
      for (int64_t i = 0; i < d; ++i) dot += s.queries[g * d + i] * float(key[i]);
      s.scores[g * s.stride + t] = dot;
    }
  }
  softmax_rows(s.scores.data(), G, context, s.stride);
  for (int64_t t = 0; t < context; ++t) {
    const scalar_t* value = values.next();
    for (int64_t g = 0; g < G; ++g) {
      const float p = s.scores[g * s.stride + t];
      for (int64_t i = 0; i < d; ++i) s.acc[g * d + i] += p * float(value[i]);
    }
  }
}

// D, the head dim, and G, the query heads per kv head, are compile-time constants so
// the queries and output accumulators live in registers. Keys are scored kLanes at a
// time: a head's kLanes dot-product vectors are summed across lanes together
// (Vec::sums), one vector of scores, instead of one horizontal sum per key, in the same
// order, so the scores are the bits a sum per key gives. Where all G heads' queries fit
// in half the vector registers (AVX-512: 32 of them) each key and value row is loaded
// once for all G heads (attend_heads_together); where they do not (AVX2's 16 hold 8 of
// D = 64's 24 for G = 3, and the spills cost more than reading the rows again) the
// heads take turns (attend_heads_in_turn): the first walks the block table and notes
// each row's address, the others reread the rows from cache. Both give the same bits.
template <int D, int G, typename scalar_t>
void attend_heads_together(const DecodeArgs<scalar_t>& a, int64_t seq, int64_t kv_head,
                           Scratch& s) {
  constexpr int L = Vec::kLanes, CHUNKS = D / L;
  const int64_t context = a.lens[seq];
  Vec query[G][CHUNKS];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < CHUNKS; ++c) query[g][c] = Vec::load(s.queries.data() + g * D + c * L);
  float* scores = s.scores.data();
  PrefetchedRows<scalar_t> keys(a, a.k_cache, seq, kv_head);
  for (int64_t t0 = 0; t0 < context; t0 += L) {
    const int64_t n = std::min<int64_t>(L, context - t0);
    Vec dots[G][L];
    for (int t = 0; t < L; ++t) {
      if (t >= n) {
        for (int g = 0; g < G; ++g) dots[g][t] = Vec::zero();
        continue;
      }
      const scalar_t* key = keys.next();
      Vec k[CHUNKS];
      for (int c = 0; c < CHUNKS; ++c) k[c] = Vec::load(key + c * L);
      for (int g = 0; g < G; ++g) {
        Vec dot = query[g][0] * k[0];
        for (int c = 1; c < CHUNKS; ++c) dot = Vec::fmadd(query[g][c], k[c], dot);
        dots[g][t] = dot;
      }
    }
    for (int g = 0; g < G; ++g) Vec::sums(dots[g]).store(scores + g * s.stride + t0);
  }
  softmax_rows(scores, G, context, s.stride);
  Vec acc[G][CHUNKS];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < CHUNKS; ++c) acc[g][c] = Vec::zero();
  PrefetchedRows<scalar_t> values(a, a.v_cache, seq, kv_head);
  for (int64_t t = 0; t < context; ++t) {
    const scalar_t* value = values.next();
    Vec v[CHUNKS];
    for (int c = 0; c < CHUNKS; ++c) v[c] = Vec::load(value + c * L);
    for (int g = 0; g < G; ++g) {
      const Vec p = Vec::set1(scores[g * s.stride + t]);
      for (int c = 0; c < CHUNKS; ++c) acc[g][c] = Vec::fmadd(p, v[c], acc[g][c]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < CHUNKS; ++c) acc[g][c].store(s.acc.data() + g * D + c * L);
}

template <int D, int G, typename scalar_t>
void attend_heads_in_turn(const DecodeArgs<scalar_t>& a, int64_t seq, int64_t kv_head,
                          Scratch& s) {
  constexpr int L = Vec::kLanes, CHUNKS = D / L;
  const int64_t context = a.lens[seq];
  float* scores = s.scores.data();
  s.rows.resize(context);
  const scalar_t** rows = reinterpret_cast<const scalar_t**>(s.rows.data());
  PrefetchedRows<scalar_t> keys(a, a.k_cache, seq, kv_head);
  for (int g = 0; g < G; ++g) {
    Vec query[CHUNKS];
    for (int c = 0; c < CHUNKS; ++c) query[c] = Vec::load(s.queries.data() + g * D + c * L);
    for (int64_t t0 = 0; t0 < context; t0 += L) {
      const int64_t n = std::min<int64_t>(L, context - t0);
      if (g == 0)
        for (int64_t t = t0; t < t0 + n; ++t) rows[t] = keys.next();
      Vec dots[L];
      for (int t = 0; t < L; ++t) {
        if (t >= n) {
          dots[t] = Vec::zero();
          continue;
        }
        const scalar_t* key = rows[t0 + t];
        Vec dot = query[0] * Vec::load(key);
        for (int c = 1; c < CHUNKS; ++c) dot = Vec::fmadd(query[c], Vec::load(key + c * L), dot);
        dots[t] = dot;
      }
      Vec::sums(dots).store(scores + g * s.stride + t0);
    }
  }
  softmax_rows(scores, G, context, s.stride);
  PrefetchedRows<scalar_t> values(a, a.v_cache, seq, kv_head);
  for (int g = 0; g < G; ++g) {
    Vec acc[CHUNKS];
    for (int c = 0; c < CHUNKS; ++c) acc[c] = Vec::zero();
    const float* weights = scores + g * s.stride;
    for (int64_t t = 0; t < context; ++t) {
      const scalar_t* value = g == 0 ? (rows[t] = values.next()) : rows[t];
      const Vec p = Vec::set1(weights[t]);
      for (int c = 0; c < CHUNKS; ++c) acc[c] = Vec::fmadd(p, Vec::load(value + c * L), acc[c]);
    }
    for (int c = 0; c < CHUNKS; ++c) acc[c].store(s.acc.data() + g * D + c * L);
  }
}

template <int D, int G, typename scalar_t>
void attend_simd(const DecodeArgs<scalar_t>& a, int64_t seq, int64_t kv_head, Scratch& s) {
  if constexpr (2 * G * (D / Vec::kLanes) <= Vec::kRegisters)
    attend_heads_together<D, G>(a, seq, kv_head, s);
  else
    attend_heads_in_turn<D, G>(a, seq, kv_head, s);
}

template <int D, typename scalar_t>
bool attend_group(const DecodeArgs<scalar_t>& a, int64_t seq, int64_t kv_head, Scratch& s) {
  switch (a.group) {
    case 1: attend_simd<D, 1>(a, seq, kv_head, s); return true;
    case 2: attend_simd<D, 2>(a, seq, kv_head, s); return true;
    case 3: attend_simd<D, 3>(a, seq, kv_head, s); return true;
    case 4: attend_simd<D, 4>(a, seq, kv_head, s); return true;
    default: return false;
  }
}

// true when a register-resident specialisation exists for this head dim
template <typename scalar_t>
bool attend_fast(const DecodeArgs<scalar_t>& a, int64_t seq, int64_t kv_head, Scratch& s) {
  switch (a.head_dim) {
    case 64: return attend_group<64>(a, seq, kv_head, s);
    case 128: return attend_group<128>(a, seq, kv_head, s);
    default: return false;
  }
}

// Units of (sequence, kv head), longest context first, taken from a shared counter:
// contexts differ a lot within a batch, and equal shares of units would leave a
// thread idle while another walks the long ones.
template <typename scalar_t>
void decode_attention_impl(const DecodeArgs<scalar_t>& a, int64_t num_seqs) {
  std::vector<int64_t> order(num_seqs);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t x, int64_t y) { return a.lens[x] > a.lens[y]; });
  const int64_t units = num_seqs * a.kv_heads;
  std::atomic<int64_t> next{0};
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), units);
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    constexpr int64_t L = Vec::kLanes;
    const int64_t G = a.group, d = a.head_dim;
    Scratch s;
    s.queries.resize(G * d);
    s.acc.resize(G * d);
    for (int64_t unit = next++; unit < units; unit = next++) {
      const int64_t seq = order[unit / a.kv_heads], kv_head = unit % a.kv_heads;
      const int64_t first_head = seq * a.num_heads + kv_head * G;
      for (int64_t i = 0; i < G * d; ++i) s.queries[i] = float(a.q[first_head * d + i]) * a.scale;
      s.stride = (a.lens[seq] + L - 1) / L * L;
      s.scores.resize(G * s.stride);
      std::fill(s.acc.begin(), s.acc.end(), 0.f);
      if (!attend_fast(a, seq, kv_head, s)) attend_scalar(a, seq, kv_head, s);
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
