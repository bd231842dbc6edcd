// Linear layers on quantized weights: y = x · Wᵀ (+ b) with W kept in groups of 32
// integers and widened to float32 in registers, so a decode step reads 6 or 9 bits per
// weight (with the float32 scales) instead of 16 or 32.
//
//   * 4-bit ("q4"): per group, 16 bytes of nibbles (byte i holds elements i and i + 16,
//     the layout of GGUF's Q4_0 and Q4_1), a scale d and an offset m; the weight is
//     (q + zero) * d + m, with zero = 0 for Q4_1 and -8 (and m = 0) for Q4_0.
//   * 8-bit ("q8"): per group, 32 signed bytes and a scale d; the weight is q * d (Q8_0).
//
// Each group's integers are multiplied with x as they are, and the group scaled once:
//   y = sum over groups g of  d_g * (sum_i (q_i + zero) x_i)  +  m_g * (sum_i x_i),
// the first term in vector lanes (one horizontal sum at the end), the second from the
// per-group sums of x computed once per call. That is one widening and one FMA per
// weight and row instead of a dequantisation per weight. Every output element is
// summed in this fixed order whatever the number of rows, so rows are batch-invariant;
// the result equals dequantize-then-matmul up to float32 rounding.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "float_gemm.h"
#include "vec.h"

namespace {

using kvscope_gemm::kGroup;
using kvscope_gemm::Prefetch;
using kvscope_vec::Vec;
constexpr int kQuantGroup = 32;
constexpr int kVecs = kQuantGroup / Vec::kLanes;  // vectors per group

// The integers of one group as float32 vectors, element order (zero added for q4).
struct Quant4 {
  const uint8_t* q;  // [N, K / 2]
  const float* d;    // [N, K / 32]
  const float* m;    // [N, K / 32]
  float zero;
  int64_t row_bytes, groups;

  void ints(int64_t j, int64_t g, Vec (&out)[kVecs]) const {
    const uint8_t* bytes = q + j * row_bytes + g * (kQuantGroup / 2);
    // bytes [b, b + lanes) hold elements b.. (low nibbles) and 16 + b.. (high ones)
    constexpr int kHalf = kVecs / 2;
    for (int v = 0; v < kHalf; ++v)
      Vec::load_nibbles(bytes + v * Vec::kLanes, out[v], out[v + kHalf]);
    if (zero != 0.f)
      for (int v = 0; v < kVecs; ++v) out[v] = out[v] + Vec::set1(zero);
  }
  float scale(int64_t j, int64_t g) const { return d[j * groups + g]; }
  const float* offsets(int64_t j) const { return m + j * groups; }
  Quant4 at(int64_t n0) const {
    return {q + n0 * row_bytes, d + n0 * groups, m + n0 * groups, zero, row_bytes, groups};
  }
};

struct Quant8 {
  const int8_t* q;  // [N, K]
  const float* d;   // [N, K / 32]
  int64_t row_bytes, groups;

  void ints(int64_t j, int64_t g, Vec (&out)[kVecs]) const {
    const int8_t* bytes = q + j * row_bytes + g * kQuantGroup;
    for (int v = 0; v < kVecs; ++v) out[v] = Vec::load_int8(bytes + v * Vec::kLanes);
  }
  float scale(int64_t j, int64_t g) const { return d[j * groups + g]; }
  const float* offsets(int64_t) const { return nullptr; }
  Quant8 at(int64_t n0) const { return {q + n0 * row_bytes, d + n0 * groups, row_bytes, groups}; }
};

// y[r, j] for rows r < R and weight rows j < C: the scaled group sums in lanes, then
// one horizontal sum, the offsets' term (x's group sums `sx` [R][groups]), the bias.
template <int C, int R, class W, typename TX>
inline void quant_tile(const TX* x, const float* sx, const W& w, const float* bias, TX* y,
                       int64_t n_out, int64_t k_in, Prefetch& pf) {
  constexpr int L = Vec::kLanes;
  Vec acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) acc[r][j] = Vec::zero();
  for (int64_t g = 0; g < w.groups; ++g) {
    const int64_t k = g * kQuantGroup;
    for (int j = 0; j < C; ++j) {
      Vec q[kVecs];
      w.ints(j, g, q);
      const Vec d = Vec::set1(w.scale(j, g));
      for (int r = 0; r < R; ++r) {
        Vec t = Vec::load(x + r * k_in + k) * q[0];
        for (int v = 1; v < kVecs; ++v) t = Vec::fmadd(Vec::load(x + r * k_in + k + v * L), q[v], t);
        acc[r][j] = Vec::fmadd(d, t, acc[r][j]);
      }
    }
    pf.step();
  }
  for (int j = 0; j < C; ++j) {
    const float* m = w.offsets(j);
    for (int r = 0; r < R; ++r) {
      float sum = acc[r][j].sum();
      if (m != nullptr) {
        float shift = 0.f;
        for (int64_t g = 0; g < w.groups; ++g) shift += m[g] * sx[r * w.groups + g];
        sum += shift;
      }
      if (bias != nullptr) sum += bias[j];
      y[r * n_out + j] = TX(sum);
    }
  }
}

// rows of a full tile, and columns: as many accumulators as the registers hold
constexpr int kQuantRows = Vec::kLanes == 16 ? 4 : 2;
constexpr int kQuantColumns = 4;

template <class W, typename TX>
void quant_gemm(const TX* x, const W& source, const float* bias, TX* y, int64_t rows,
                int64_t n_out, int64_t k_in, const void* base) {
  // each row's sums over every group of 32 (for the offsets' term), in a fixed order
  std::vector<float> sx(rows * source.groups);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < source.groups; ++g) {
      Vec s = Vec::load(x + r * k_in + g * kQuantGroup);
      for (int v = 1; v < kVecs; ++v) s = s + Vec::load(x + r * k_in + g * kQuantGroup + v * Vec::kLanes);
      sx[r * source.groups + g] = s.sum();
    }
  constexpr int R = kQuantRows, C = kQuantColumns;
  const int64_t tiles = (rows + R - 1) / R * (kGroup / C);
  kvscope_gemm::for_each_group(n_out, k_in, source.row_bytes, tiles, base,
                               [&](int64_t n0, Prefetch& pf) {
    const W wg = source.at(n0);
    const float* bg = bias ? bias + n0 : nullptr;
    for (int64_t r = 0; r < rows; r += R) {
      const TX* xr = x + r * k_in;
      const float* sr = sx.data() + r * source.groups;
      TX* yr = y + r * n_out + n0;
      for (int c = 0; c < kGroup; c += C) {
        const W wc = wg.at(c);
        const float* bc = bg ? bg + c : nullptr;
        switch (std::min<int64_t>(R, rows - r)) {
          case 1: quant_tile<C, 1>(xr, sr, wc, bc, yr + c, n_out, k_in, pf); break;
          case 2: quant_tile<C, 2>(xr, sr, wc, bc, yr + c, n_out, k_in, pf); break;
          case 3: if constexpr (R > 3) quant_tile<C, 3>(xr, sr, wc, bc, yr + c, n_out, k_in, pf); break;
          default: if constexpr (R > 3) quant_tile<C, R>(xr, sr, wc, bc, yr + c, n_out, k_in, pf); break;
        }
      }
    }
  });
}

void check_inputs(const at::Tensor& x, const at::Tensor& scales, int64_t n_out,
                  const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "quantized linear: x must be a contiguous [rows, K] float32 or bf16 tensor");
  const int64_t k_in = x.size(1);
  TORCH_CHECK(k_in % kQuantGroup == 0 && n_out % 8 == 0,
              "quantized linear: K must be a multiple of 32 and N of 8");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                  scales.dim() == 2 && scales.size(0) == n_out &&
                  scales.size(1) == k_in / kQuantGroup,
              "quantized linear: scales must be float32 [N, K / 32]");
  if (bias.has_value())
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() == n_out,
                "quantized linear: bias must be float32 [N]");
}

template <class W>
at::Tensor run(const at::Tensor& x, const W& source, const c10::optional<at::Tensor>& bias,
               int64_t n_out, const void* base) {
  auto y = at::empty({x.size(0), n_out}, x.options());
  if (x.size(0) == 0 || n_out == 0) return y;
  const float* b = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  AT_DISPATCH_SWITCH(x.scalar_type(), "quant_linear",
    AT_DISPATCH_CASE(at::kFloat, [&] {
      quant_gemm(x.data_ptr<scalar_t>(), source, b, y.data_ptr<scalar_t>(), x.size(0), n_out,
                 x.size(1), base);
    })
    AT_DISPATCH_CASE(at::kBFloat16, [&] {
      quant_gemm(x.data_ptr<scalar_t>(), source, b, y.data_ptr<scalar_t>(), x.size(0), n_out,
                 x.size(1), base);
    }));
  return y;
}

}  // namespace

namespace {

// The weights as float32 [N, K], computed as (q + zero) * d + m, GGUF's formula: for the
// prompt rows of a big step, which a library GEMM on this copy takes faster.
template <class W>
at::Tensor dequantize(const W& source, int64_t n_out, int64_t k_in) {
  auto out = at::empty({n_out, k_in}, at::kFloat);
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n_out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const float* m = source.offsets(j);
      for (int64_t g = 0; g < source.groups; ++g) {
        Vec q[kVecs];
        source.ints(j, g, q);
        const Vec d = Vec::set1(source.scale(j, g));
        const Vec shift = Vec::set1(m != nullptr ? m[g] : 0.f);
        for (int v = 0; v < kVecs; ++v) {
          Vec w = q[v] * d;
          if (m != nullptr) w = w + shift;
          w.store(o + j * k_in + g * kQuantGroup + v * Vec::kLanes);
        }
      }
    }
  });
  return out;
}

}  // namespace

at::Tensor q4_dequantize(at::Tensor q, at::Tensor scales, at::Tensor offsets, double zero) {
  TORCH_CHECK(q.scalar_type() == at::kByte && q.is_contiguous() && q.dim() == 2 &&
                  scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                  offsets.sizes() == scales.sizes() && offsets.is_contiguous() &&
                  scales.size(0) == q.size(0) && scales.size(1) * 16 == q.size(1),
              "q4_dequantize: q uint8 [N, K / 2], scales and offsets float32 [N, K / 32]");
  const int64_t k_in = q.size(1) * 2;
  const Quant4 source{q.data_ptr<uint8_t>(), scales.data_ptr<float>(),
                      offsets.data_ptr<float>(), static_cast<float>(zero), k_in / 2,
                      k_in / kQuantGroup};
  return dequantize(source, q.size(0), k_in);
}

at::Tensor q8_dequantize(at::Tensor q, at::Tensor scales) {
  TORCH_CHECK(q.scalar_type() == at::kChar && q.is_contiguous() && q.dim() == 2 &&
                  scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                  scales.size(0) == q.size(0) && scales.size(1) * kQuantGroup == q.size(1),
              "q8_dequantize: q int8 [N, K], scales float32 [N, K / 32]");
  const Quant8 source{q.data_ptr<int8_t>(), scales.data_ptr<float>(), q.size(1),
                      q.size(1) / kQuantGroup};
  return dequantize(source, q.size(0), q.size(1));
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
  const Quant4 source{q.data_ptr<uint8_t>(), scales.data_ptr<float>(),
                      offsets.data_ptr<float>(), static_cast<float>(zero), x.size(1) / 2,
                      x.size(1) / kQuantGroup};
  return run(x, source, bias, n_out, q.data_ptr());
}

// x [rows, K]; q [N, K] int8; scales [N, K / 32] float32
at::Tensor q8_linear(at::Tensor x, at::Tensor q, at::Tensor scales,
                     c10::optional<at::Tensor> bias) {
  const int64_t n_out = q.size(0);
  check_inputs(x, scales, n_out, bias);
  TORCH_CHECK(q.scalar_type() == at::kChar && q.is_contiguous() && q.dim() == 2 &&
                  q.size(1) == x.size(1),
              "q8_linear: q must be int8 [N, K]");
  const Quant8 source{q.data_ptr<int8_t>(), scales.data_ptr<float>(), x.size(1),
                      x.size(1) / kQuantGroup};
  return run(x, source, bias, n_out, q.data_ptr());
}
