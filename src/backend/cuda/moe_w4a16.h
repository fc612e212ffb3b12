#pragma once
// INT4 (W4A16) routed experts for decode on the GPU: a grouped GEMV that reads each expert's packed INT4 weights
// in place (compressed-tensors pack-quantized, the layout of backend.h's Weight: value k of a row is q + 8 in
// bits [4 (k % 8), 4 (k % 8) + 4) of word k / 8, q in [-8, 7], times the row's scale of group k / group).
// Plain C++ types only, so tests can call it without CUDA headers.
#include <cstdint>

struct CUstream_st;

namespace moe::cuda {

struct W4A16GemvParams {
  const float* x = nullptr;          // [M, K] rows in expert order (rows of expert e: offsets[e] .. offsets[e + 1])
  int64_t ldx = 0;
  const int32_t* offsets = nullptr;  // [E + 1], device
  const void* const* words = nullptr;   // [E] device pointers to uint32 [N, K / 8]
  const void* const* scales = nullptr;  // [E] device pointers to [N, K / group] (BF16, or F32 when f32_scales)
  bool f32_scales = false;
  int32_t E = 0, N = 0, K = 0, group = 32;
  float* y = nullptr;  // [M, N]: y[r, n] = sum_k x[r, k] * W_e(r)[n, k]
  int64_t ldy = 0;
  // Expert e's pointers are words[e * table_stride] and scales[e * table_stride] (the backend's expert table,
  // [E][gate, up, down, their scales x3], is read with stride 6 from its matrix's column).
  int32_t table_stride = 1;
  // Work-item mode (the backend's moe_plan): when items is set, block row i takes item (expert, begin, count) of
  // items [n_items, 3] over perm's expert-sorted assignments; sorted row r reads x row perm[r] / x_row_div and
  // writes y row perm[r] (slot order), and offsets is unused. Otherwise rows are in expert order (offsets).
  const int32_t* items = nullptr;
  int32_t n_items = 0;
  const int32_t* perm = nullptr;
  int32_t x_row_div = 1;
};
// K % group == 0 and group % 8 == 0 are the caller's to ensure (checked, an error naming the launcher otherwise).
void moe_w4a16_gemv(const W4A16GemvParams& p, CUstream_st* stream);

}  // namespace moe::cuda
