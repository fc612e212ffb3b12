#pragma once
// The per-warp tiles of the tensor-core decode GEMV (issue 14): a candidate replacement for gemv_mma.cuh's
// gemv_mma_block, built on production's helpers (mma_tile_sums, item_weights, dense_weights, combine_tail)
// and timed by sandbox_moe_decode_experts and sandbox_gemv_mma. Measured on an H100, 2026-12-06
// (bench/RESULTS.md, "per-warp tiles"): a MoE layer's expert launches 15-24 % faster for FP8 at 4 and 8
// tokens and 3 % for BF16, but slower at one token (the plain variants by 15-21 %; the early one, kPdl 2
// after 1, even), and 2.5-4.6x slower on the dense projections (too few tiles to stream from every SM). Not
// in production yet: it has not run in the test suite or a whole-model decode. To adopt it for grouped passes
// of 2+ assignments: move this file's body into gemv_mma.cuh and send those passes to
// launch_gemv_mma_warp<WT, 4, 4, 2> from gemv.cuh's launch_gemv.
#include "backend/cuda/gemv.cuh"

namespace moe::cuda::gemv_detail {

// work_item and assignment through L2 only (ld.global.cg), for a kernel that reads them before
// griddepcontrol.wait (kPdl 2 below): L1 may hold an earlier launch's lines of the same scratch.
__device__ __forceinline__ WorkItem work_item_l2(const GemvParams& p, bool l2) {
  if (!l2) return work_item(p);
  if (p.items) {
    const int32_t* it = p.items + 3 * blockIdx.y;
    return WorkItem{__ldcg(it), __ldcg(it + 1), __ldcg(it + 2)};
  }
  const int e = __ldcg(p.ids + blockIdx.y);
  return {e, int(blockIdx.y), e >= 0 ? 1 : 0};
}
__device__ __forceinline__ int assignment_l2(const GemvParams& p, const WorkItem& w, int i) {
  return p.items ? __ldcg(p.perm + w.begin + i) : w.begin;
}

// One warp per 16-row tile: warp w of block x takes tile x B + w and walks all of K itself, U steps of loads
// deep, with no cross-warp sum. gemv_mma_block splits one tile's K over 8 warps, and so pays 8 warps of fixed
// cost (work item, table, shared-memory sum) per 16 rows; at one token or assignment a pass (batch-1 decode)
// its blocks are short and many (88 an assignment for Moonlight's expert gate / up) and their waves' ramps
// bound the launch. Here a block holds B tiles: 8x fewer warps, each with a longer stream. One accumulator
// chain over K per lane (a different summation order from gemv_mma_block's). Grouped mode: tiles of the
// item's expert (blockIdx.y), after griddepcontrol.wait (kPdl below); dense mode: tiles of p.w[0] (and p.w[1]
// under SwiGLU), then of p.second, rows from p.w_row_base + blockIdx.y p.w_row_step, the first round of
// weights loaded before the wait. Every thread returns having passed griddepcontrol.wait. kPdl (grouped;
// programmatic dependent launch): 0 = trigger, then wait before anything (the work items come from the
// previous kernel); 1 = wait, then trigger (the next kernel may then read what came before this one); 2 =
// trigger, read the work item, the table and the first round of weights, then wait (after a kernel launched
// with 1: the items come from an earlier kernel, complete when this one starts; x comes from the previous
// one).
template <DType WT, bool SWIGLU, int B, int U, int kPdl = 0>
__device__ __forceinline__ void gemv_mma_warp_tiles(const GemvParams& p) {
  constexpr bool kFp8 = WT == DType::F8_E4M3;
  constexpr int M = SWIGLU ? 2 : 1;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, g = lane / 4, c = lane % 4;
  const int64_t K = p.K, tile = int64_t(blockIdx.x) * B + warp;
  const bool group = grouped(p);
  if (!group || kPdl != 1) pdl_trigger();
  if (group && kPdl == 0)
    pdl_wait();  // the work items (moe_plan) or the ids (moe_route) come from earlier kernels
  if (group && kPdl == 1) {
    pdl_wait();
    pdl_trigger();
  }
  bool waited = group && kPdl != 2;
  const auto done = [&] {
    if (!waited) pdl_wait();
  };
  const char* wbase[M];
  const float* sbase[M];
  int64_t N, r0, row_base = 0;
  int ntok;
  const float* xrow;  // token g's x row
  WorkItem w{};
  float* out;  // dense: token 0's output row
  int64_t out_stride;
  if (group) {
    N = p.N;
    r0 = tile * kMmaRows;
    if (r0 >= N) return done();
    w = work_item_l2(p, kPdl == 2);
    ntok = w.count;
    if (ntok == 0) return done();
    item_weights<M>(p, w, wbase, sbase);
    xrow = p.x + int64_t(assignment_l2(p, w, min(g, ntok - 1)) / p.x_row_div) * p.x_stride;
    out = p.out;
    out_stride = p.out_stride;
  } else {
    const int64_t first_tiles = (p.N + kMmaRows - 1) / kMmaRows, y = blockIdx.y;
    const bool second = p.second.N > 0 && tile >= first_tiles;
    N = second ? p.second.N : p.N;
    r0 = (second ? tile - first_tiles : tile) * kMmaRows;
    if (r0 >= N) return done();
    row_base = p.w_row_base + y * p.w_row_step;
    dense_weights<M>(p, second, wbase, sbase);
    ntok = p.T;
    xrow = p.x + y * p.x_step + int64_t(min(g, ntok - 1)) * p.x_stride;
    out = (second ? p.second.out : p.out) + y * p.out_step;
    out_stride = second ? p.second.out_stride : p.out_stride;
  }
  float acc[M][4];
  mma_tile_sums<WT, M, U>(wbase, sbase, row_base, r0, N, K, xrow, g < ntok, 0, 1, waited, acc);
  // acc[m][i]: row g + 8 (i / 2), token 2c + i % 2.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), t = 2 * c + i % 2;
    if (t >= ntok || r0 + row >= N) continue;
    float r = kFp8 ? acc[0][i] * (1.0f / kMmaXScale) : acc[0][i];
    if constexpr (SWIGLU)
      r = r / (1.0f + __expf(-r)) * (kFp8 ? acc[M - 1][i] * (1.0f / kMmaXScale) : acc[M - 1][i]);
    const int64_t orow = group ? int64_t(assignment_l2(p, w, t)) : t;
    out[orow * out_stride + r0 + row] = r;
  }
}

template <DType WT, bool SWIGLU, int B, int U, int kPdl = 0>
__global__ void __launch_bounds__(B * 32) gemv_mma_warp_kernel(GemvParams p) {
  gemv_mma_warp_tiles<WT, SWIGLU, B, U, kPdl>(p);
}

// Blocks along x of the per-warp kernels: B tiles of 16 rows each.
template <int B>
unsigned warp_tile_blocks(int64_t N, int64_t N2 = 0) {
  return unsigned(((N + kMmaRows - 1) / kMmaRows + (N2 + kMmaRows - 1) / kMmaRows + B - 1) / B);
}
template <DType WT, int B, int U1, int U2>  // U1 steps deep without SwiGLU, U2 with
void launch_gemv_mma_warp(const GemvParams& p, cudaStream_t s) {
  const dim3 grid(warp_tile_blocks<B>(p.N, grouped(p) ? 0 : p.second.N), unsigned(p.grid_y), 1);
  if (p.swiglu)
    launch("gemv_mma_warp", gemv_mma_warp_kernel<WT, true, B, U2>, grid, B * 32, 0, s, p);
  else
    launch("gemv_mma_warp", gemv_mma_warp_kernel<WT, false, B, U1>, grid, B * 32, 0, s, p);
}

}  // namespace moe::cuda::gemv_detail
