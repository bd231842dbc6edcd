// A decode step's decoder layers in one call: what the Python layer loop of
// model/llama.py does for a step of decodes only, the same kernels in the same order,
// with no Python between them. At batch 1 on a small model the loop's own cost (module
// calls, argument checks, a pybind crossing per kernel: ~12 per layer) is a large share
// of the step; here it is one crossing per step. The CPU's counterpart of capturing a
// step in a CUDA graph: the work is the same, the launching is what goes.
//
// The stack holds each layer's weights as the Python modules hold them (registered
// once at load) and picks each linear's kernel exactly as they do for decode rows, so
// every output bit equals the loop's (tests/test_decode_stack.py).
#include <torch/csrc/utils/pybind.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/linear.h>

#include <optional>
#include <vector>

at::Tensor paged_decode_attention(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                                  at::Tensor block_tables, at::Tensor context_lens,
                                  double scale);
at::Tensor rms_norm(at::Tensor x, at::Tensor weight, double eps);
at::Tensor add_rms_norm(at::Tensor x, at::Tensor residual, at::Tensor weight, double eps);
at::Tensor silu_and_mul(at::Tensor gate_up);
void rope_inplace(at::Tensor qkv, at::Tensor cos, at::Tensor sin, int64_t heads,
                  int64_t head_dim);
at::Tensor small_gemm(at::Tensor x, at::Tensor weight, c10::optional<at::Tensor> bias);
at::Tensor q4_linear(at::Tensor x, at::Tensor q, at::Tensor scales, at::Tensor offsets,
                     double zero, c10::optional<at::Tensor> bias);
at::Tensor q8_linear(at::Tensor x, at::Tensor q, at::Tensor scales,
                     c10::optional<at::Tensor> bias);
at::Tensor q4_linear_i8(at::Tensor x, at::Tensor q, at::Tensor scales, at::Tensor offsets,
                        double zero, c10::optional<at::Tensor> bias);
void write_kv(at::Tensor k_cache, at::Tensor v_cache, at::Tensor k, at::Tensor v,
              at::Tensor slot_mapping);

namespace {

// oneDNN's linear on a weight packed by torch.ops.mkldnn._reorder_linear_weight: the op
// Python calls (model/layers/linear.py), found once through the dispatcher
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed,
                         const c10::optional<at::Tensor>& bias) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                            const std::optional<at::Tensor>&, c10::string_view,
                            c10::List<std::optional<at::Scalar>>,
                            std::optional<c10::string_view>)>();
  return op.call(x, packed, bias, "none", c10::List<std::optional<at::Scalar>>(),
                 c10::string_view(""));
}

// How a linear multiplies, as model/layers/linear.py and quantized_linear.py choose
// for decode rows.
enum class LinearKind : int64_t {
  kSmallGemm = 0,  // bf16 weight that small_gemm takes
  kLibrary = 1,    // at::linear (weights neither small_gemm nor a packed copy takes)
  kQ4Int8 = 2,     // 4-bit weight, int8 activations
  kQ4Float = 3,    // 4-bit weight, float activations
  kQ8 = 4,         // 8-bit weight
  kPacked = 5,     // oneDNN on the weight pre-packed in its blocked layout
};

struct LinearSpec {
  LinearKind kind;
  at::Tensor weight;  // the dense weight, or the packed integers
  at::Tensor scales, offsets;  // quantized only (offsets: q4 only)
  double zero = 0.0;
  c10::optional<at::Tensor> bias;

  at::Tensor operator()(const at::Tensor& x) const {
    switch (kind) {
      case LinearKind::kSmallGemm: return small_gemm(x, weight, bias);
      case LinearKind::kLibrary: return at::linear(x, weight, bias);
      case LinearKind::kQ4Int8: return q4_linear_i8(x, weight, scales, offsets, zero, bias);
      case LinearKind::kQ4Float: return q4_linear(x, weight, scales, offsets, zero, bias);
      case LinearKind::kQ8: return q8_linear(x, weight, scales, bias);
      case LinearKind::kPacked: return packed_linear(x, weight, bias);
    }
    TORCH_CHECK(false, "decode stack: unknown linear kind");
  }
};

struct Layer {
  at::Tensor input_norm, post_norm;
  LinearSpec qkv, o, gate_up, down;
};

class DecodeStack {
 public:
  // `scale`: the attention's 1/sqrt(head_dim), as Python computes it (the same bits)
  DecodeStack(int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, double eps,
              double scale)
      : num_heads_(num_heads), num_kv_heads_(num_kv_heads), head_dim_(head_dim), eps_(eps),
        scale_(scale) {}

  // kinds and tensors in the order qkv, o, gate_up, down; each tensors entry is
  // [weight, scales, offsets, bias] with undefined (None) tensors where absent
  void add_layer(at::Tensor input_norm, at::Tensor post_norm, std::vector<int64_t> kinds,
                 std::vector<std::vector<c10::optional<at::Tensor>>> tensors,
                 std::vector<double> zeros) {
    TORCH_CHECK(kinds.size() == 4 && tensors.size() == 4 && zeros.size() == 4,
                "decode stack: a layer has 4 linears");
    std::vector<LinearSpec> specs;
    for (size_t i = 0; i < 4; ++i) {
      TORCH_CHECK(kinds[i] >= 0 && kinds[i] <= 5 && tensors[i].size() == 4 &&
                      tensors[i][0].has_value(),
                  "decode stack: a linear needs a kind in 0-5 and [weight, scales, "
                  "offsets, bias]");
      const auto& t = tensors[i];
      specs.push_back({static_cast<LinearKind>(kinds[i]), *t[0],
                       t[1].value_or(at::Tensor()), t[2].value_or(at::Tensor()), zeros[i],
                       t[3]});
    }
    layers_.push_back({input_norm, post_norm, specs[0], specs[1], specs[2], specs[3]});
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // x [T, hidden]: the embedding (residual None) or the previous stage's output with
  // its residual stream; runs the first `count` layers on a step of T decodes and
  // returns (the last layer's output, the residual stream), not yet summed
  std::tuple<at::Tensor, at::Tensor> run(at::Tensor x, c10::optional<at::Tensor> residual_in,
                                         std::vector<at::Tensor> k_caches,
                                         std::vector<at::Tensor> v_caches, at::Tensor cos,
                                         at::Tensor sin, at::Tensor slot_mapping,
                                         at::Tensor block_tables, at::Tensor context_lens,
                                         int64_t count) {
    TORCH_CHECK(count >= 1 && count <= num_layers() &&
                    static_cast<int64_t>(k_caches.size()) == count &&
                    static_cast<int64_t>(v_caches.size()) == count,
                "decode stack: one K and one V pool per layer run, 1..num_layers layers");
    const int64_t tokens = x.size(0);
    const int64_t q_size = num_heads_ * head_dim_, kv_size = num_kv_heads_ * head_dim_;
    at::Tensor residual = residual_in.value_or(at::Tensor());
    for (int64_t i = 0; i < count; ++i) {
      const Layer& layer = layers_[i];
      at::Tensor hidden;
      if (!residual.defined()) {
        residual = x;
        hidden = rms_norm(x, layer.input_norm, eps_);
      } else {
        hidden = add_rms_norm(x, residual, layer.input_norm, eps_);
      }
      at::Tensor qkv = layer.qkv(hidden);
      rope_inplace(qkv, cos, sin, num_heads_ + num_kv_heads_, head_dim_);
      auto parts = qkv.split_with_sizes({q_size, kv_size, kv_size}, -1);
      at::Tensor q = parts[0].view({tokens, num_heads_, head_dim_});
      at::Tensor k = parts[1].view({tokens, num_kv_heads_, head_dim_});
      at::Tensor v = parts[2].view({tokens, num_kv_heads_, head_dim_});
      write_kv(k_caches[i], v_caches[i], k, v, slot_mapping);
      at::Tensor attended = paged_decode_attention(q.contiguous(), k_caches[i], v_caches[i],
                                                   block_tables, context_lens, scale_);
      hidden = add_rms_norm(layer.o(attended.view({tokens, -1})), residual, layer.post_norm,
                            eps_);
      x = layer.down(silu_and_mul(layer.gate_up(hidden)));
    }
    return {x, residual};
  }

 private:
  int64_t num_heads_, num_kv_heads_, head_dim_;
  double eps_, scale_;
  std::vector<Layer> layers_;
};

}  // namespace

void bind_decode_stack(pybind11::module& m) {
  pybind11::class_<DecodeStack>(m, "DecodeStack",
                                "a decode step's decoder layers in one call")
      .def(pybind11::init<int64_t, int64_t, int64_t, double, double>())
      .def("add_layer", &DecodeStack::add_layer)
      .def("num_layers", &DecodeStack::num_layers)
      .def("run", &DecodeStack::run);
}
