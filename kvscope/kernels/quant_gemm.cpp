// Linear layers on quantized weights: y = x · Wᵀ (+ b) with W kept in groups of 32
// integers and widened to float32 in registers, so a decode step reads 6 or 9 bits per
// weight (with the float32 scales) instead of 16 or 32.
//
//   * 4-bit ("q4"): per group, 16 bytes of nibbles (byte i holds elements i and i + 16,
//     the layout of GGUF's Q4_0 and Q4_1), a float32 scale d and offset m; the weight is
//     (q + zero) * d + m, with zero = 0 for Q4_1 and -8 (and m = 0) for Q4_0. These are
//     the operations, in this order, of the gguf package's dequantisation, so a weight
//     here equals the dequantised one to the bit.
//   * 8-bit ("q8"): per group, 32 signed bytes and a scale d; the weight is q * d
//     (GGUF's Q8_0, and Q5_0 repacked). Weights from Q6_K come in groups of 16 (two
//     scales per 32 weights); the kernel tells the two apart by the scales' shape.
//
// The weights feed the float32 tiles of float_gemm.h as they are widened: rows are
// row-invariant as there, and calls of many rows first widen each block of 8 weight
// rows into float32 with the same code, then run the dense tiles on it.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>

#include "float_gemm.h"
#include "vec.h"

namespace {

using kvscope_gemm::Vec;
constexpr int kQuantGroup = 32;

struct Quant4Weights {
  const uint8_t* q;  // [N, K / 2]
  const float* d;    // [N, K / 32]
  const float* m;    // [N, K / 32]
  float zero;
  int64_t row_bytes, groups;

  static constexpr int kStep = kQuantGroup;

  Vec load(int64_t j, int64_t k) const {
    const int64_t g = k / kQuantGroup, e = k % kQuantGroup;  // powers of two: shifts
    const uint8_t* bytes = q + j * row_bytes + g * (kQuantGroup / 2) + e % (kQuantGroup / 2);
    return weights(Vec::load_nibbles(bytes, e >= kQuantGroup / 2), Vec::set1(d[j * groups + g]),
                   Vec::set1(m[j * groups + g]));
  }
  // the group from k (a multiple of 32): its bytes read once, its scale and offset once
  void load_step(int64_t j, int64_t k, Vec* out) const {
    const int64_t g = k / kQuantGroup;
    const uint8_t* bytes = q + j * row_bytes + g * (kQuantGroup / 2);
    const Vec scale = Vec::set1(d[j * groups + g]), offset = Vec::set1(m[j * groups + g]);
    constexpr int half = kQuantGroup / 2;
    for (int e = 0; e < kQuantGroup; e += Vec::kLanes)
      out[e / Vec::kLanes] = weights(Vec::load_nibbles(bytes + e % half, e >= half), scale, offset);
  }
  Vec weights(Vec ints, Vec scale, Vec offset) const {
    if (zero != 0.f) ints = ints + Vec::set1(zero);
    return ints * scale + offset;
  }
  Quant4Weights at(int64_t n0) const {
    return {q + n0 * row_bytes, d + n0 * groups, m + n0 * groups, zero, row_bytes, groups};
  }
};

// G weights per scale: 32 (Q8_0, Q5_0), or 16 (Q6_K); a vector never spans two groups
template <int G>
struct Quant8Weights {
  static_assert(G % Vec::kLanes == 0 && kQuantGroup % G == 0, "a vector within a group");
  const int8_t* q;  // [N, K]
  const float* d;   // [N, K / G]
  int64_t row_bytes, groups;

  static constexpr int kStep = kQuantGroup;

  Vec load(int64_t j, int64_t k) const {
    return Vec::load_int8(q + j * row_bytes + k) * Vec::set1(d[j * groups + k / G]);
  }
  void load_step(int64_t j, int64_t k, Vec* out) const {
    const int8_t* ints = q + j * row_bytes + k;
    const float* scales = d + j * groups + k / G;
    for (int e = 0; e < kQuantGroup; e += Vec::kLanes)
      out[e / Vec::kLanes] = Vec::load_int8(ints + e) * Vec::set1(scales[e / G]);
  }
  Quant8Weights at(int64_t n0) const {
    return {q + n0 * row_bytes, d + n0 * groups, row_bytes, groups};
  }
};

void check_inputs(const at::Tensor& x, const at::Tensor& scales, int64_t n_out,
                  const c10::optional<at::Tensor>& bias, int64_t group = kQuantGroup) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "quantized linear: x must be a contiguous [rows, K] float32 or bf16 tensor");
  const int64_t k_in = x.size(1);
  TORCH_CHECK(k_in % kQuantGroup == 0 && n_out % 8 == 0,
              "quantized linear: K must be a multiple of 32 and N of 8");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                  scales.dim() == 2 && scales.size(0) == n_out &&
                  scales.size(1) == k_in / group,
              "quantized linear: scales must be float32 [N, K / group]");
  if (bias.has_value())
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() == n_out,
                "quantized linear: bias must be float32 [N]");
}

template <class W>
at::Tensor run(const at::Tensor& x, const W& source, const c10::optional<at::Tensor>& bias,
               int64_t n_out, const void* base, int64_t row_bytes) {
  auto y = at::empty({x.size(0), n_out}, x.options());
  if (x.size(0) == 0 || n_out == 0) return y;
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  AT_DISPATCH_SWITCH(x.scalar_type(), "quant_linear",
    AT_DISPATCH_CASE(at::kFloat, [&] {
      kvscope_gemm::quant_gemm(x.data_ptr<scalar_t>(), source, b, y.data_ptr<scalar_t>(),
                               x.size(0), n_out, x.size(1), base, row_bytes);
    })
    AT_DISPATCH_CASE(at::kBFloat16, [&] {
      kvscope_gemm::quant_gemm(x.data_ptr<scalar_t>(), source, b, y.data_ptr<scalar_t>(),
                               x.size(0), n_out, x.size(1), base, row_bytes);
    }));
  return y;
}

// The weights as float32 [N, K], computed by the same `load` as the tiles: for the
// prompt rows of a big step, which a library GEMM on this copy takes faster.
template <class W>
at::Tensor dequantize(const W& source, int64_t n_out, int64_t k_in) {
  auto out = at::empty({n_out, k_in}, at::kFloat);
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n_out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j)
      for (int64_t k = 0; k < k_in; k += Vec::kLanes) source.load(j, k).store(o + j * k_in + k);
  });
  return out;
}

// 16 or 32 weights per scale, from the shape of the scales
int64_t q8_group(const at::Tensor& q, const at::Tensor& scales) {
  TORCH_CHECK(q.scalar_type() == at::kChar && q.is_contiguous() && q.dim() == 2 &&
                  scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                  scales.dim() == 2 && scales.size(0) == q.size(0) &&
                  (scales.size(1) * 32 == q.size(1) || scales.size(1) * 16 == q.size(1)),
              "q8: q int8 [N, K], scales float32 [N, K / 32] or [N, K / 16]");
  return q.size(1) / scales.size(1);
}

// calls `body(source)` with the q8 source of the group size the scales give
template <class Body>
auto with_q8_source(const at::Tensor& q, const at::Tensor& scales, Body body) {
  const int8_t* ints = q.data_ptr<int8_t>();
  const float* d = scales.data_ptr<float>();
  if (q8_group(q, scales) == 16)
    return body(Quant8Weights<16>{ints, d, q.size(1), scales.size(1)});
  return body(Quant8Weights<32>{ints, d, q.size(1), scales.size(1)});
}

}  // namespace

at::Tensor q4_dequantize(at::Tensor q, at::Tensor scales, at::Tensor offsets, double zero) {
  TORCH_CHECK(q.scalar_type() == at::kByte && q.is_contiguous() && q.dim() == 2 &&
                  scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                  offsets.sizes() == scales.sizes() && offsets.is_contiguous() &&
                  scales.size(0) == q.size(0) && scales.size(1) * 16 == q.size(1),
              "q4_dequantize: q uint8 [N, K / 2], scales and offsets float32 [N, K / 32]");
  const int64_t k_in = q.size(1) * 2;
  const Quant4Weights source{q.data_ptr<uint8_t>(), scales.data_ptr<float>(),
                             offsets.data_ptr<float>(), static_cast<float>(zero), k_in / 2,
                             k_in / kQuantGroup};
  return dequantize(source, q.size(0), k_in);
}

// x [rows, K]; q [N, K / 2] uint8; scales, offsets [N, K / 32] float32; zero: 0 or -8
at::Tensor q4_linear(at::Tensor x, at::Tensor q, at::Tensor scales, at::Tensor offsets,
                     double zero, c10::optional<at::Tensor> bias) {
  const int64_t n_out = q.size(0);
  check_inputs(x, scales, n_out, bias);
  TORCH_CHECK(q.scalar_type() == at::kByte && q.is_contiguous() && q.dim() == 2 &&
                  q.size(1) * 2 == x.size(1),
              "q4_linear: q must be uint8 [N, K / 2]");
  TORCH_CHECK(offsets.sizes() == scales.sizes() && offsets.scalar_type() == at::kFloat &&
                  offsets.is_contiguous(),
              "q4_linear: offsets must be float32 [N, K / 32]");
  const Quant4Weights source{q.data_ptr<uint8_t>(), scales.data_ptr<float>(),
                             offsets.data_ptr<float>(), static_cast<float>(zero),
                             x.size(1) / 2, x.size(1) / kQuantGroup};
  return run(x, source, bias, n_out, q.data_ptr(), x.size(1) / 2);
}

at::Tensor q8_dequantize(at::Tensor q, at::Tensor scales) {
  return with_q8_source(q, scales, [&](const auto& source) {
    return dequantize(source, q.size(0), q.size(1));
  });
}

// x [rows, K]; q [N, K] int8; scales [N, K / 32] or [N, K / 16] float32
at::Tensor q8_linear(at::Tensor x, at::Tensor q, at::Tensor scales,
                     c10::optional<at::Tensor> bias) {
  const int64_t n_out = q.size(0);
  const int64_t group = q8_group(q, scales);
  check_inputs(x, scales, n_out, bias, group);
  TORCH_CHECK(q.size(1) == x.size(1), "q8_linear: q must be int8 [N, K]");
  return with_q8_source(q, scales, [&](const auto& source) {
    return run(x, source, bias, n_out, q.data_ptr(), x.size(1));
  });
}
