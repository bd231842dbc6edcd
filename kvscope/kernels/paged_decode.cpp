// Paged attention for single-token decodes on CPU.
//
// Each (sequence, kv head) pair is one unit of work: its G query heads (grouped-query
// attention) walk the sequence's block table, score every cached key, take one
// softmax, and sum the values. K/V are read in place from the paged pool — no
// gather into a contiguous copy — and all arithmetic is float32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

template <typename scalar_t>
void decode_attention_impl(const at::Tensor& q, const at::Tensor& k_cache,
                           const at::Tensor& v_cache, const at::Tensor& block_tables,
                           const at::Tensor& context_lens, at::Tensor& out, double scale) {
  const int64_t num_seqs = q.size(0), num_heads = q.size(1), head_dim = q.size(2);
  const int64_t block_size = k_cache.size(1), kv_heads = k_cache.size(2);
  const int64_t group = num_heads / kv_heads, max_blocks = block_tables.size(1);
  const scalar_t* q_ptr = q.data_ptr<scalar_t>();
  const scalar_t* k_ptr = k_cache.data_ptr<scalar_t>();
  const scalar_t* v_ptr = v_cache.data_ptr<scalar_t>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  scalar_t* out_ptr = out.data_ptr<scalar_t>();
  const int64_t token_stride = kv_heads * head_dim;  // between tokens of one block
  const float fscale = static_cast<float>(scale);

  at::parallel_for(0, num_seqs * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> queries(group * head_dim), acc(group * head_dim), row(head_dim);
    std::vector<float> scores;
    for (int64_t work = begin; work < end; ++work) {
      const int64_t seq = work / kv_heads, kv_head = work % kv_heads;
      const int64_t context = lens[seq];
      scores.assign(group * context, 0.f);
      for (int64_t g = 0; g < group; ++g) {
        const scalar_t* src = q_ptr + (seq * num_heads + kv_head * group + g) * head_dim;
        for (int64_t i = 0; i < head_dim; ++i) queries[g * head_dim + i] = float(src[i]) * fscale;
      }
      // scores[g, t] = q_g · k_t
      for (int64_t t = 0; t < context; ++t) {
        const int64_t block = tables[seq * max_blocks + t / block_size];
        const scalar_t* key = k_ptr + (block * block_size + t % block_size) * token_stride +
                              kv_head * head_dim;
        for (int64_t i = 0; i < head_dim; ++i) row[i] = float(key[i]);
        for (int64_t g = 0; g < group; ++g) {
          const float* qg = queries.data() + g * head_dim;
          float dot = 0.f;
          for (int64_t i = 0; i < head_dim; ++i) dot += qg[i] * row[i];
          scores[g * context + t] = dot;
        }
      }
      // one softmax per query head over the whole context
      for (int64_t g = 0; g < group; ++g) {
        float* s = scores.data() + g * context;
        const float peak = *std::max_element(s, s + context);
        float total = 0.f;
        for (int64_t t = 0; t < context; ++t) {
          s[t] = std::exp(s[t] - peak);
          total += s[t];
        }
        const float inv = 1.f / total;
        for (int64_t t = 0; t < context; ++t) s[t] *= inv;
      }
      // out[g] = sum_t p[g, t] v_t
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < context; ++t) {
        const int64_t block = tables[seq * max_blocks + t / block_size];
        const scalar_t* value = v_ptr + (block * block_size + t % block_size) * token_stride +
                                kv_head * head_dim;
        for (int64_t i = 0; i < head_dim; ++i) row[i] = float(value[i]);
        for (int64_t g = 0; g < group; ++g) {
          const float p = scores[g * context + t];
          float* a = acc.data() + g * head_dim;
          for (int64_t i = 0; i < head_dim; ++i) a[i] += p * row[i];
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        scalar_t* dst = out_ptr + (seq * num_heads + kv_head * group + g) * head_dim;
        for (int64_t i = 0; i < head_dim; ++i) dst[i] = scalar_t(acc[g * head_dim + i]);
      }
    }
  });
}

}  // namespace

// q [S, H, d]; k_cache, v_cache [num_blocks, block_size, kv_heads, d]; block_tables [S, max
// blocks] int64; context_lens [S] int64 → out [S, H, d]
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
  AT_DISPATCH_FLOATING_TYPES_AND(at::ScalarType::BFloat16, q.scalar_type(), "paged_decode", [&] {
    decode_attention_impl<scalar_t>(q, k_cache, v_cache, block_tables, context_lens, out, scale);
  });
  return out;
}
