// W4A16 grouped GEMV (moe_w4a16.h): one warp per output row n of one expert; lanes stride over the row's words
// (8 INT4 values each, one 32-byte sector per 8 lanes), each word decoded in registers and applied to up to
// kRows activation rows at once; the warp's partial sums reduced with shuffles. Rows of an expert beyond kRows
// take further passes over the same weights (from L2). Grid: (ceil(N / kWarps), E), or one row of blocks per
// work item of moe_plan (the backend's decode path: x and y rows through the permutation).
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/moe_w4a16.h"

namespace moe::cuda {

namespace {

constexpr int kWarps = 4, kRows = 4;

__global__ void __launch_bounds__(kWarps * 32) w4a16_gemv_kernel(W4A16GemvParams p) {
  pdl_wait();  // x comes from the kernel before
  pdl_trigger();
  const int lane = threadIdx.x % 32;
  const int32_t n = int32_t(blockIdx.x) * kWarps + int32_t(threadIdx.x / 32);
  if (n >= p.N) return;
  int32_t e, begin, end;
  if (p.items) {
    const int32_t* it = p.items + 3 * int64_t(blockIdx.y);
    e = it[0];
    begin = it[1];
    end = begin + it[2];
  } else {
    e = int32_t(blockIdx.y);
    begin = p.offsets[e];
    end = p.offsets[e + 1];
  }
  if (begin >= end) return;
  const int32_t words = p.K / 8, groups = p.K / p.group;
  const uint32_t* w = static_cast<const uint32_t*>(p.words[int64_t(e) * p.table_stride]) + int64_t(n) * words;
  const void* sp = p.scales[int64_t(e) * p.table_stride];
  for (int32_t r0 = begin; r0 < end; r0 += kRows) {
    const int rows = min(kRows, end - r0);
    // The rows' x and y rows (the sorted assignments' slots in work-item mode).
    int64_t xr[kRows], yr[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int32_t s = r < rows ? (p.perm ? p.perm[r0 + r] : r0 + r) : 0;
      xr[r] = p.perm ? s / p.x_row_div : s;
      yr[r] = s;
    }
    float acc[kRows] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int32_t wd = lane; wd < words; wd += 32) {
      const uint32_t word = w[wd];
      const int32_t g = wd * 8 / p.group;
      const float s = p.f32_scales ? static_cast<const float*>(sp)[int64_t(n) * groups + g]
                                   : bf16_bits_to_float(static_cast<const uint16_t*>(sp)[int64_t(n) * groups + g]);
      float v[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = float(int((word >> (4 * j)) & 0xfu) - 8) * s;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r >= rows) break;
        const float* x = p.x + xr[r] * p.ldx + int64_t(wd) * 8;
        const float4 a = *reinterpret_cast<const float4*>(x), b = *reinterpret_cast<const float4*>(x + 4);
        acc[r] += a.x * v[0] + a.y * v[1] + a.z * v[2] + a.w * v[3] + b.x * v[4] + b.y * v[5] + b.z * v[6] + b.w * v[7];
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float total = warp_sum(acc[r]);
      if (lane == 0 && r < rows) p.y[yr[r] * p.ldy + n] = total;
    }
  }
}

}  // namespace

void moe_w4a16_gemv(const W4A16GemvParams& p, CUstream_st* stream) {
  if ((p.items ? p.n_items : p.E) == 0 || p.N == 0) return;
  if (p.group <= 0 || p.group % 8 || p.K % p.group || p.ldx % 4)
    check(cudaErrorInvalidValue, "moe_w4a16_gemv: K must be whole groups of a multiple of 8, x rows 16-byte aligned");
  if (p.items && (!p.perm || p.x_row_div <= 0))
    check(cudaErrorInvalidValue, "moe_w4a16_gemv: work items need the permutation and a row divisor");
  const unsigned grid_y = unsigned(p.items ? p.n_items : p.E);
  launch("moe_w4a16_gemv", w4a16_gemv_kernel, dim3(unsigned((p.N + kWarps - 1) / kWarps), grid_y),
         dim3(kWarps * 32), 0, stream, p);
}

}  // namespace moe::cuda
