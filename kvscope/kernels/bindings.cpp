// Python bindings for the CPU kernels of kvscope.
#include <torch/csrc/utils/pybind.h>

#include "vec.h"

at::Tensor paged_decode_attention(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                                     at::Tensor block_tables, at::Tensor context_lens,
                                     double scale);
at::Tensor paged_prefill_attention(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                                   at::Tensor block_tables, at::Tensor query_starts,
                                   at::Tensor start_positions, double scale);
at::Tensor rms_norm(at::Tensor x, at::Tensor weight, double eps);
at::Tensor add_rms_norm(at::Tensor x, at::Tensor residual, at::Tensor weight,
                           double eps);
at::Tensor silu_and_mul(at::Tensor gate_up);
void rope_inplace(at::Tensor qkv, at::Tensor cos, at::Tensor sin, int64_t heads,
                  int64_t head_dim);

at::Tensor small_gemm(at::Tensor x, at::Tensor weight, c10::optional<at::Tensor> bias);
bool small_gemm_bf16_dot();
at::Tensor q4_linear(at::Tensor x, at::Tensor q, at::Tensor scales, at::Tensor offsets,
                     double zero, c10::optional<at::Tensor> bias);
at::Tensor q8_linear(at::Tensor x, at::Tensor q, at::Tensor scales,
                     c10::optional<at::Tensor> bias);
at::Tensor q4_linear_i8(at::Tensor x, at::Tensor q, at::Tensor scales, at::Tensor offsets,
                        double zero, c10::optional<at::Tensor> bias);
void write_kv(at::Tensor k_cache, at::Tensor v_cache, at::Tensor k, at::Tensor v,
              at::Tensor slot_mapping);
at::Tensor q4_dequantize(at::Tensor q, at::Tensor scales, at::Tensor offsets, double zero);
at::Tensor q8_dequantize(at::Tensor q, at::Tensor scales);
at::Tensor q4_interleaved_dequantize(at::Tensor q, at::Tensor scales, at::Tensor offsets,
                                     double zero, bool bf16);
void bind_decode_stack(pybind11::module& m);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention,
        "decode attention reading K/V in place through block tables");
  m.def("paged_prefill_attention", &paged_prefill_attention,
        "causal attention of all prefill chunks of a step, K/V read through block tables");
  m.def("rms_norm", &rms_norm, "RMSNorm in float32, rounded like the reference");
  m.def("add_rms_norm", &add_rms_norm, "residual += x, then RMSNorm of the residual");
  m.def("silu_and_mul", &silu_and_mul, "silu(gate) * up over a fused gate/up projection");
  m.def("small_gemm", &small_gemm,
        "x @ weight.T (+ bias), bf16 or float32; each row the same whatever the row count");
  m.def("small_gemm_bf16_dot", &small_gemm_bf16_dot,
        "bf16 x bf16 calls use AVX512-BF16 dot products (else float32 FMAs)");
  m.def("q4_linear", &q4_linear, "x @ W.T (+ bias), W in 4-bit groups of 32 (Q4_0 / Q4_1)");
  m.def("q8_linear", &q8_linear, "x @ W.T (+ bias), W in 8-bit groups of 32 or 16 (Q8_0, Q5_0; Q6_K)");
  m.def("q4_linear_i8", &q4_linear_i8,
        "x @ W.T (+ bias), W in 4-bit groups of 32 interleaved 16 rows at a time, x "
        "quantized to int8 groups of 32");
  m.def("q4_interleaved_dequantize", &q4_interleaved_dequantize,
        "interleaved 4-bit groups to dense [N, K] (bf16 or float32), GGUF's formula");
  m.def("write_kv", &write_kv, "copy each token's K and V heads to its pool slot");
  m.def("q4_dequantize", &q4_dequantize, "4-bit groups of 32 to float32, GGUF's formula");
  m.def("q8_dequantize", &q8_dequantize, "8-bit groups of 32 or 16 to float32, GGUF's formula");
  m.def("isa", [] { return std::string(kvscope_vec::kIsa); },
        "the instruction set this module was compiled for");
  m.def("vector_lanes", [] { return kvscope_vec::Vec::kLanes; },
        "float32 lanes of the vectors its kernels run on");
  m.def("rope_inplace", &rope_inplace, "rotary embedding of q and k heads, in place");
  bind_decode_stack(m);
}
