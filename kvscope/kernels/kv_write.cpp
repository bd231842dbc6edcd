// Writing a step's new K and V into the paged pool: token t's heads go to slot
// slot_mapping[t] (block_id * block_size + offset) of each cache. One copy per token
// and cache; torch's index_copy_ does the same through TensorIterator, whose setup
// costs more than the copy for the handful of tokens of a decode step.
#include <ATen/core/Tensor.h>

#include <cstring>

namespace {

void check_rows(const at::Tensor& cache, const at::Tensor& rows, const char* name) {
  const int64_t row = cache.size(-2) * cache.size(-1);
  TORCH_CHECK(rows.dim() == 3 && rows.size(1) * rows.size(2) == row &&
                  rows.stride(2) == 1 && rows.stride(1) == rows.size(2) &&
                  rows.scalar_type() == cache.scalar_type(),
              "write_kv: ", name, " must be [T, kv_heads, head_dim] of the cache's dtype, "
              "each token's heads contiguous");
}

}  // namespace

// k_cache, v_cache [blocks, block_size, kv_heads, head_dim]; k, v [T, kv_heads, head_dim]
void write_kv(at::Tensor k_cache, at::Tensor v_cache, at::Tensor k, at::Tensor v,
              at::Tensor slot_mapping) {
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() &&
                  k_cache.sizes() == v_cache.sizes() && k_cache.dim() == 4,
              "write_kv: the caches must be contiguous [blocks, block_size, kv_heads, "
              "head_dim] of one shape");
  check_rows(k_cache, k, "k");
  check_rows(v_cache, v, "v");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.dim() == 1 &&
                  slot_mapping.is_contiguous() && slot_mapping.numel() == k.size(0) &&
                  v.size(0) == k.size(0),
              "write_kv: slot_mapping must be int64 [T], one slot per token");
  const int64_t slots = k_cache.size(0) * k_cache.size(1);
  const int64_t row_bytes = k_cache.size(2) * k_cache.size(3) * k_cache.element_size();
  const int64_t* slot = slot_mapping.data_ptr<int64_t>();
  auto* kc = static_cast<char*>(k_cache.data_ptr());
  auto* vc = static_cast<char*>(v_cache.data_ptr());
  const auto* ks = static_cast<const char*>(k.data_ptr());
  const auto* vs = static_cast<const char*>(v.data_ptr());
  const int64_t k_stride = k.stride(0) * k.element_size(), v_stride = v.stride(0) * v.element_size();
  for (int64_t t = 0; t < k.size(0); ++t)
    TORCH_CHECK(slot[t] >= 0 && slot[t] < slots, "write_kv: slot ", slot[t],
                " is outside the pool of ", slots, " slots");
  for (int64_t t = 0; t < k.size(0); ++t) {
    std::memcpy(kc + slot[t] * row_bytes, ks + t * k_stride, row_bytes);
    std::memcpy(vc + slot[t] * row_bytes, vs + t * v_stride, row_bytes);
  }
}
