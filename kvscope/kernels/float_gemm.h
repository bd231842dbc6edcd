// The float32-math GEMM shared by the dense and the quantized linears: y = x · Wᵀ (+ b)
// with every output element one dot product in a fixed order (the vector lanes of
// vec.h over k, one horizontal sum, the bias, one rounding), so a row gets the same
// bits whatever the number of rows in the call.
//
// The weights come from a *source*: `Vec load(j, k)` gives weights [k, k + lanes) of
// the j-th weight row from where the source starts, `load_step(j, k, out)` the kStep
// weights from k on (a quantized group at once, so what the vectors of a group share
// is unpacked once; the same values as `load`), and `at(n0)` starts it n0 rows
// later. Dense sources load bf16 or float32; quantized ones (quant_gemm.cpp) widen
// their integers and scale them in registers. A quantized source's rows are computed
// the same way whether the tile reads them directly (a few rows of x) or from a
// float32 copy of the block made by the same `load` (many rows), so the choice never
// changes a bit.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "vec.h"

namespace kvscope_gemm {

using kvscope_vec::Vec;

constexpr int64_t kColumnGrain = 64;  // columns per parallel task, at least
constexpr int kGroup = 8;             // weight rows (output columns) per block
constexpr int kTileColumns = 4;       // columns of a full tile
constexpr int64_t kPrefetchBytes = 48 << 10;  // how far ahead the prefetched block lies
// rows of a full tile: as many as the registers hold with 4 columns
constexpr int kFloatRows = Vec::kLanes == 16 ? 4 : 3;

// Lines of a later weight block still to prefetch, spread over the current block's tiles.
struct Prefetch {
  const char* next;
  const char* end;
  int per_step;  // lines per k step of a tile

  void step() {
    for (int p = 0; p < per_step && next < end; ++p, next += 64) __builtin_prefetch(next, 0, 2);
  }
};

// Groups of 8 weight rows in parallel; `run(n0, prefetch)` computes the columns
// [n0, n0 + 8) for every row. `row_bytes` is the bytes of one weight row at `w` (what
// is prefetched), `tiles` how many tiles a group takes (the prefetch of the block
// after next is spread over them).
template <class Run>
void for_each_group(int64_t n_out, int64_t k_in, int64_t row_bytes, int64_t tiles,
                    const void* w, Run run) {
  const int64_t block_bytes = std::max<int64_t>(1, kGroup * row_bytes);
  const int64_t lines_per_step = std::max<int64_t>(1, block_bytes / 64 * 32 / std::max<int64_t>(32, k_in));
  const int per_step = static_cast<int>((lines_per_step + tiles - 1) / std::max<int64_t>(1, tiles));
  const int64_t blocks_ahead = std::max<int64_t>(1, kPrefetchBytes / block_bytes);
  const auto* w_end = static_cast<const char*>(w) + n_out * row_bytes;
  at::parallel_for(0, n_out / kGroup, kColumnGrain / kGroup, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) {
      const auto* ahead = static_cast<const char*>(w) + (group + blocks_ahead) * block_bytes;
      Prefetch pf{ahead, std::min(ahead + block_bytes, w_end), per_step};
      run(group * kGroup, pf);
    }
  });
}

// Weights stored as bf16 or float32, row after row.
template <typename TW>
struct DenseWeights {
  const TW* w;
  int64_t k_in;

  static constexpr int kStep = Vec::kLanes;  // weights of a row per `load_step`

  Vec load(int64_t j, int64_t k) const { return Vec::load(w + j * k_in + k); }
  void load_step(int64_t j, int64_t k, Vec* out) const { out[0] = load(j, k); }
  DenseWeights at(int64_t n0) const { return {w + n0 * k_in, k_in}; }
};

// y[r, j] for rows r < R of x and weight rows j < C of the source
template <int C, int R, typename TX, class W, typename TB>
inline void float_tile(const TX* x, const W& w, const TB* bias, TX* y, int64_t n_out,
                       int64_t k_in, Prefetch& pf) {
  constexpr int L = Vec::kLanes;
  Vec acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) acc[r][j] = Vec::zero();
  constexpr int V = W::kStep / L;  // vectors per step
  for (int64_t k = 0; k < k_in; k += W::kStep) {
    Vec xs[V][R];
    for (int v = 0; v < V; ++v)
      for (int r = 0; r < R; ++r) xs[v][r] = Vec::load(x + r * k_in + k + v * L);
    for (int j = 0; j < C; ++j) {
      Vec wv[V];
      w.load_step(j, k, wv);
      for (int v = 0; v < V; ++v)
        for (int r = 0; r < R; ++r) acc[r][j] = Vec::fmadd(xs[v][r], wv[v], acc[r][j]);
    }
    if (k % 32 == 0) pf.step();
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) {
      float sum = acc[r][j].sum();
      if (bias != nullptr) sum += float(bias[j]);
      y[r * n_out + j] = TX(sum);
    }
}

// All rows of x over one block of 8 weight rows (starting at the source `wg`).
template <typename TX, class W, typename TB>
inline void block_rows(const TX* x, const W& wg, const TB* bg, TX* yg, int64_t rows,
                       int64_t n_out, int64_t k_in, Prefetch& pf) {
  constexpr int R = kFloatRows;
  const int64_t rest = rows % R;
  int64_t r = 0;
  for (; r + R <= rows; r += R)
    for (int c = 0; c < kGroup; c += kTileColumns)
      float_tile<kTileColumns, R>(x + r * k_in, wg.at(c), bg ? bg + c : nullptr,
                                  yg + r * n_out + c, n_out, k_in, pf);
  const TX* xr = x + r * k_in;
  TX* yr = yg + r * n_out;
  // the last rows: all 8 columns at once for 1-2 rows (decode: 8 weight streams)
  if (rest == 1) float_tile<kGroup, 1>(xr, wg, bg, yr, n_out, k_in, pf);
  if (rest == 2) float_tile<kGroup, 2>(xr, wg, bg, yr, n_out, k_in, pf);
  if constexpr (R > 3) {
    if (rest == 3)
      for (int c = 0; c < kGroup; c += kTileColumns)
        float_tile<kTileColumns, 3>(xr, wg.at(c), bg ? bg + c : nullptr, yr + c, n_out, k_in,
                                    pf);
  }
}

inline int64_t tiles_per_block(int64_t rows) {
  const int64_t rest = rows % kFloatRows;
  return rows / kFloatRows * (kGroup / kTileColumns) + (rest == 0 ? 0 : rest <= 2 ? 1 : 2);
}

// y = x · Wᵀ (+ b) for a dense source
template <typename TX, typename TW>
void dense_gemm(const TX* x, const TW* w, const TW* bias, TX* y, int64_t rows, int64_t n_out,
                int64_t k_in) {
  const DenseWeights<TW> source{w, k_in};
  for_each_group(n_out, k_in, k_in * int64_t(sizeof(TW)), tiles_per_block(rows), w,
                 [&](int64_t n0, Prefetch& pf) {
                   block_rows(x, source.at(n0), bias ? bias + n0 : nullptr, y + n0, rows,
                              n_out, k_in, pf);
                 });
}

// Rows of x from which a quantized block is first widened into a float32 copy (made by
// the source's own `load`, so the same values) that all of them read.
constexpr int64_t kWidenRows = 2;

// y = x · Wᵀ (+ b) for a quantized source; `base` and `row_bytes` locate its packed
// integers (what is prefetched)
template <typename TX, class W>
void quant_gemm(const TX* x, const W& source, const float* bias, TX* y, int64_t rows,
                int64_t n_out, int64_t k_in, const void* base, int64_t row_bytes) {
  for_each_group(n_out, k_in, row_bytes, tiles_per_block(rows), base,
                 [&](int64_t n0, Prefetch& pf) {
                   const float* bg = bias ? bias + n0 : nullptr;
                   const W wg = source.at(n0);
                   if (rows < kWidenRows) {
                     block_rows(x, wg, bg, y + n0, rows, n_out, k_in, pf);
                     return;
                   }
                   thread_local std::vector<float> widened;
                   widened.resize(kGroup * k_in);
                   for (int j = 0; j < kGroup; ++j)
                     for (int64_t k = 0; k < k_in; k += Vec::kLanes)
                       wg.load(j, k).store(widened.data() + j * k_in + k);
                   block_rows(x, DenseWeights<float>{widened.data(), k_in}, bg, y + n0, rows,
                              n_out, k_in, pf);
                 });
}

}  // namespace kvscope_gemm
