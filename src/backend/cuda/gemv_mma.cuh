#pragma once
// Decode GEMV on the tensor cores, for FP8 E4M3 weights (128x128 block scales) at 1-8 tokens and BF16 weights
// at 2-8 tokens: out[t, n] = x[t] . W[n], dense (with GemvParams' second matrix and batched rows) or grouped
// (moe_plan's work items), plain or SwiGLU (gate and up rows, silu(g) * u). gemv.cuh's launcher picks it; the
// CUDA-core kernel there keeps BF16 at one token (faster there: measured in bench/gpu/sandbox/gemv_mma.cu),
// F16 / F32 weights and shapes this one does not take.
//
// Why: the CUDA-core GEMV widens every FP8 value (3 integer operations) and multiplies it (1 FMA), ~8
// operations per weight byte against BF16's ~1; at 16 bytes per clock and SM (4.2 TB/s over 132 SMs) the
// integer pipe alone caps it far below the bandwidth (H200: 0.6-0.8 TB/s on Moonlight's projections), and at
// 8 tokens the 8 FMAs per weight bind both dtypes. Here mma.sync m16n8k16 (BF16 x BF16 -> F32) multiplies:
// BF16 weights as they are, FP8 after 2 integer operations per value, and the 8 columns of the mma are 8
// tokens, so 8 tokens cost what 1 does.
//
// Block: 8 warps own 16 weight rows (per matrix); warp w takes the column steps w, w + 8, ... of 64 columns
// (FP8) or 32 (BF16). Lane (g = lane / 4, c = lane % 4) loads the 16 bytes at step column 16c (FP8) / 8c
// (BF16) of rows g and g + 8. An mma's k order is free as long as A and B agree, so these 16 contiguous bytes
// are the lane's A fragments for the step's 4 (FP8) / 2 (BF16) mmas: mma j takes the lane's values 4j .. 4j +
// 3 as its logical k 2c, 2c + 1, 2c + 8, 2c + 9, and the B fragment of lane (g, c), token g's column, holds
// x[token g] at exactly those physical columns: every lane reads its own 16 (8) x values. x is rounded to
// BF16 (HF computes decode in BF16; the CUDA-core kernel keeps F32 x). FP8: the byte s eeee mmm goes to BF16
// bits 15 and 10..4, which is 2^-120 times its value (as e4m3_placed in cuda_common.cuh), x is scaled by 2^60
// before rounding so that the products stay F32 normals, each step (inside one 128-wide scale block)
// accumulates into fresh registers added with the block scale times 2^120, and the sum is scaled back by
// 2^-60 (powers of two: exact). The 8 warps' partial sums meet in shared memory. Dense mode loads its first
// weights before griddepcontrol.wait (weights do not depend on the previous kernel); grouped mode waits first
// (the work items come from moe_plan, or the ids from moe_route). FP8 grouped passes of several assignments
// run the per-warp tiles instead (gemv_mma_warp_tiles below): the same fragments and mmas, one warp walking
// all of a 16-row tile's K.
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/tensor_core.cuh"

namespace moe::cuda {

namespace gemv_detail {

constexpr int kMmaRows = 16, kMmaWarps = 8, kMmaUnroll = 4;
constexpr float kMmaXScale = 0x1p60f;  // FP8: x scale before rounding (see above)

// Grouped mode: work items from moe_plan, or the ids of moe_route as work items of one assignment each.
__host__ __device__ __forceinline__ bool grouped(const GemvParams& p) {
  return p.items != nullptr || p.ids != nullptr;
}
// Grouped mode's work item blockIdx.y: expert e and `count` assignments from `begin` (of perm; without a
// plan, begin is the one assignment itself).
struct WorkItem {
  int e, begin, count;
};
__device__ __forceinline__ WorkItem work_item(const GemvParams& p) {
  if (p.items) {
    const int32_t* it = p.items + 3 * blockIdx.y;
    return {it[0], it[1], it[2]};
  }
  const int e = p.ids[blockIdx.y];
  return {e, int(blockIdx.y), e >= 0 ? 1 : 0};  // id -1: no expert (Backend::moe_experts), nothing to compute
}
// The item's i-th assignment (i < count).
__device__ __forceinline__ int assignment(const GemvParams& p, const WorkItem& w, int i) {
  return p.items ? p.perm[w.begin + i] : w.begin;
}

template <DType WT>
constexpr int mma_step_cols() {
  return WT == DType::F8_E4M3 ? 64 : 32;
}

// Two E4M3 bytes (the low or high half of w) -> BF16x2 bits of 2^-120 times their values.
__device__ __forceinline__ uint32_t e4m3x2_placed_bf16(uint32_t w, bool high) {
  const uint32_t u = __byte_perm(w, 0u, high ? 0x3424u : 0x1404u);  // [b1 0 b0 0]
  return (u & 0x80008000u) | ((u >> 4) & 0x07f007f0u);
}

// A grouped work item's weights: matrices p.matrix (+ 1 under SwiGLU) of expert w.e from the table.
template <int M>
__device__ __forceinline__ void item_weights(const GemvParams& p, const WorkItem& w, const char* (&wbase)[M],
                                             const float* (&sbase)[M]) {
#pragma unroll
  for (int m = 0; m < M; ++m) {
    wbase[m] = static_cast<const char*>(p.table[w.e * 6 + p.matrix + m]);
    sbase[m] = static_cast<const float*>(p.table[w.e * 6 + 3 + p.matrix + m]);
  }
}

// Token g's x at the lane's values of one step (xc: its first, kVals of them) as the mma's B fragments, BF16
// pairs (FP8: x scaled by kMmaXScale first); zeros where the lane's token is not valid (!tok).
// kShared: xc points into shared memory (gemv_ring.cuh), else global memory read through the read-only path.
template <DType WT, bool kShared = false>
__device__ __forceinline__ void mma_x_fragments(const float* xc, bool tok,
                                                uint32_t (&xb)[WT == DType::F8_E4M3 ? 8 : 4]) {
  constexpr int kVals = WT == DType::F8_E4M3 ? 16 : 8;
#pragma unroll
  for (int i = 0; i < kVals / 4; ++i) {
    const float4* q = reinterpret_cast<const float4*>(xc) + i;
    float4 v = !tok ? make_float4(0.f, 0.f, 0.f, 0.f) : kShared ? *q : __ldg(q);
    if constexpr (WT == DType::F8_E4M3)
      v = make_float4(v.x * kMmaXScale, v.y * kMmaXScale, v.z * kMmaXScale, v.w * kMmaXScale);
    xb[2 * i] = pack_bf16(v.x, v.y);
    xb[2 * i + 1] = pack_bf16(v.z, v.w);
  }
}

// One step's mmas for one matrix: A from the lane's 16 bytes of rows g (va) and g + 8 (vb). FP8: the step's
// products added to acc times its block scale (*scale, times kE4m3Placed); BF16: straight into acc.
template <DType WT>
__device__ __forceinline__ void mma_step(const uint4& va, const uint4& vb,
                                         const uint32_t (&xb)[WT == DType::F8_E4M3 ? 8 : 4],
                                         const float* scale, float (&acc)[4]) {
  const uint32_t A[4] = {va.x, va.y, va.z, va.w};
  const uint32_t B[4] = {vb.x, vb.y, vb.z, vb.w};
  if constexpr (WT == DType::F8_E4M3) {
    float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // the lane's values 4j .. 4j + 3: word j
      const uint32_t a[4] = {e4m3x2_placed_bf16(A[j], false), e4m3x2_placed_bf16(B[j], false),
                             e4m3x2_placed_bf16(A[j], true), e4m3x2_placed_bf16(B[j], true)};
      mma_bf16(part, a, xb[2 * j], xb[2 * j + 1]);
    }
    const float sc = __ldg(scale) * kE4m3Placed;
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[i] = fmaf(part[i], sc, acc[i]);
  } else {
#pragma unroll
    for (int j = 0; j < 2; ++j) {  // values 4j .. 4j + 3: words 2j, 2j + 1
      const uint32_t a[4] = {A[2 * j], B[2 * j], A[2 * j + 1], B[2 * j + 1]};
      mma_bf16(acc, a, xb[2 * j], xb[2 * j + 1]);
    }
  }
}

// A lane's sums for the 16-row tile r0 .. r0 + 15 (of N rows from row_base) of M matrices against token g's x
// row (tok: the lane's token is valid), over the K steps first, first + stride, ... of kStep columns: U-deep
// rounds of 16-byte loads of rows g and g + 8, then per step x (BF16) and the mmas, FP8 steps added to acc
// with their block scale. pdl_wait() after the first round's loads unless `waited` (dense mode: weights do
// not depend on the previous kernel, x does).
template <DType WT, int M, int U>
__device__ __forceinline__ void mma_tile_sums(const char* const (&wbase)[M], const float* const (&sbase)[M],
                                              int64_t row_base, int64_t r0, int64_t N, int64_t K,
                                              const float* xrow, bool tok, int64_t first, int64_t stride,
                                              bool waited, float (&acc)[M][4]) {
  constexpr bool kFp8 = WT == DType::F8_E4M3;
  constexpr int kStep = mma_step_cols<WT>(), kBytes = kFp8 ? 1 : 2, kVals = kFp8 ? 16 : 8;
  const int lane = int(threadIdx.x) % 32, g = lane / 4, c = lane % 4;
  const int64_t ra = row_base + min(r0 + g, N - 1), rb = row_base + min(r0 + g + 8, N - 1);
  const int64_t kblocks = (K + 127) / 128, nsteps = K / kStep;
  const char* wa[M];
  const char* wb[M];
  const float* srow[M];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    wa[m] = wbase[m] + ra * K * kBytes + c * 16;
    wb[m] = wbase[m] + rb * K * kBytes + c * 16;
    srow[m] =
        kFp8 ? sbase[m] + ((row_base + r0) / 128) * kblocks : nullptr;  // 16 rows inside one 128-row block
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[m][i] = 0.0f;
  }
  const float* xc = xrow + c * kVals;
  for (int64_t s0 = first; s0 < nsteps; s0 += stride * U) {
    uint4 va[M][U], vb[M][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t s = s0 + stride * u;
      if (s < nsteps) {
#pragma unroll
        for (int m = 0; m < M; ++m) {
          va[m][u] = load_stream(wa[m] + s * kStep * kBytes);
          vb[m][u] = load_stream(wb[m] + s * kStep * kBytes);
        }
      }
    }
    if (!waited) {  // x comes from the previous kernel
      pdl_wait();
      waited = true;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t s = s0 + stride * u;
      if (s >= nsteps) break;
      uint32_t xb[kVals / 2];
      mma_x_fragments<WT>(xc + s * kStep, tok, xb);
#pragma unroll
      for (int m = 0; m < M; ++m)
        mma_step<WT>(va[m][u], vb[m][u], xb, kFp8 ? srow[m] + (s * kStep) / 128 : nullptr, acc[m]);
    }
  }
  if (!waited) pdl_wait();
}

// A row's output for one token from its sums over K (one per matrix): FP8 scaled back by 2^-60 (see the top),
// SwiGLU silu(gate) * up.
template <DType WT, int M>
__device__ __forceinline__ float mma_output(const float (&sum)[M]) {
  float v[M];
#pragma unroll
  for (int m = 0; m < M; ++m) v[m] = WT == DType::F8_E4M3 ? sum[m] * (1.0f / kMmaXScale) : sum[m];
  return M == 2 ? v[0] / (1.0f + __expf(-v[0])) * v[M - 1] : v[0];
}

// The 8 warps' sums of one 16-row tile meet in shared memory: warp w stores its acc[m] (rows g, g + 8; token
// columns 2c, 2c + 1) at red[m][w]; after a __syncthreads, thread (row, t) adds them in warp order.
template <int M>
using MmaWarpSums = float[M][kMmaWarps][kMmaRows][8];
template <int M>
__device__ __forceinline__ void mma_store_sums(MmaWarpSums<M>& red, const float (&acc)[M][4], int warp, int g,
                                               int c) {
#pragma unroll
  for (int m = 0; m < M; ++m) {
    red[m][warp][g][2 * c] = acc[m][0];
    red[m][warp][g][2 * c + 1] = acc[m][1];
    red[m][warp][g + 8][2 * c] = acc[m][2];
    red[m][warp][g + 8][2 * c + 1] = acc[m][3];
  }
}
template <int M>
__device__ __forceinline__ void mma_warp_totals(const MmaWarpSums<M>& red, int row, int t, float (&sum)[M]) {
#pragma unroll
  for (int m = 0; m < M; ++m) {
    sum[m] = 0.0f;
#pragma unroll
    for (int k = 0; k < kMmaWarps; ++k) sum[m] += red[m][k][row][t];
  }
}

// One block's rows (256 threads). A device function so that a fused kernel can go on after it
// (gemv_combine.cu): every thread returns from it having passed griddepcontrol.wait.
template <DType WT, bool SWIGLU>
__device__ __forceinline__ void gemv_mma_block(const GemvParams& p) {
  constexpr int M = SWIGLU ? 2 : 1;
  __shared__ MmaWarpSums<M> red;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, g = lane / 4, c = lane % 4;
  const bool second = p.second.first_block > 0 && blockIdx.x >= p.second.first_block;
  const int64_t N = second ? p.second.N : p.N, K = p.K;
  const int64_t r0 = int64_t(second ? blockIdx.x - p.second.first_block : blockIdx.x) * kMmaRows;
  pdl_trigger();

  const char* wbase[M];
  const float* sbase[M];
  const float* xrow;  // token g's x row
  int ntok;           // valid token columns
  int64_t row_base = 0;
  if (grouped(p)) {
    pdl_wait();  // the work items (moe_plan) or the ids (moe_route) come from earlier kernels
    const WorkItem w = work_item(p);
    ntok = w.count;
    if (ntok == 0) return;
    item_weights<M>(p, w, wbase, sbase);
    xrow = p.x + int64_t(assignment(p, w, min(g, ntok - 1)) / p.x_row_div) * p.x_stride;
  } else {
    const int64_t y = blockIdx.y;
    row_base = p.w_row_base + y * p.w_row_step;
#pragma unroll
    for (int m = 0; m < M; ++m) {  // p.w[m], or p.second's one matrix for the blocks past the first matrix
      wbase[m] = static_cast<const char*>(second ? p.second.w : p.w[m]);
      sbase[m] = second ? p.second.s : p.s[m];
    }
    ntok = p.T;
    xrow = p.x + y * p.x_step + int64_t(min(g, ntok - 1)) * p.x_stride;
  }
  const bool tok = g < ntok;
  float acc[M][4];
  mma_tile_sums<WT, M, kMmaUnroll>(wbase, sbase, row_base, r0, N, K, xrow, tok, warp, kMmaWarps, grouped(p),
                                   acc);
  mma_store_sums<M>(red, acc, warp, g, c);
  __syncthreads();
  if (threadIdx.x >= kMmaRows * 8) return;
  const int row = int(threadIdx.x) / 8, t = int(threadIdx.x) % 8;
  if (t >= ntok || r0 + row >= N) return;
  float sum[M];
  mma_warp_totals<M>(red, row, t, sum);
  const float r = mma_output<WT, M>(sum);
  float* orow;
  if (grouped(p)) {
    orow = p.out + int64_t(assignment(p, work_item(p), t)) * p.out_stride;
  } else {
    orow = (second ? p.second.out : p.out) + int64_t(blockIdx.y) * p.out_step +
           int64_t(t) * (second ? p.second.out_stride : p.out_stride);
  }
  orow[r0 + row] = r;
}

template <DType WT, bool SWIGLU>
__global__ void __launch_bounds__(256) gemv_mma_kernel(GemvParams p) {
  gemv_mma_block<WT, SWIGLU>(p);
}

// Whether gemv_mma_kernel takes these parameters at `tile` tokens (assignments) per pass.
template <DType WT>
bool mma_gemv_ok(const GemvParams& p, int tile) {
  if (WT != DType::F8_E4M3 && WT != DType::BF16) return false;
  if (WT == DType::BF16 && tile < 2) return false;  // one token: the CUDA-core kernel is as fast or faster
  if (tile > 8 || (!grouped(p) && p.T > 8)) return false;
  if (p.K % mma_step_cols<WT>() != 0 || p.x_stride % 4 != 0 || p.x_step % 4 != 0 ||
      reinterpret_cast<uintptr_t>(p.x) % 16 != 0)
    return false;
  if (WT == DType::F8_E4M3 &&
      (p.block_n != 128 || p.block_k != 128 || p.w_row_base % kMmaRows != 0 || p.w_row_step % kMmaRows != 0))
    return false;
  return true;
}

// The per-warp tiles, for grouped passes of several assignments (warp_tiles_pay below): warp w of block x
// takes the 16-row tile x B + w of its work item's expert and walks all of K itself, U steps of loads deep,
// with no cross-warp sum (one accumulator chain over K per lane: another summation order than
// gemv_mma_block's). gemv_mma_block splits one tile's K over 8 warps and so pays 8 warps of fixed cost (work
// item, table, the shared-memory sum) per 16 rows; once an expert's pass carries several assignments (or
// there are many passes), that cost and the short blocks' waves bind. At one assignment a pass and few passes
// (batch-1 decode) the 8-warp block is as fast or faster in a chain of launches, and dense projections have
// too few tiles to stream from every SM with one warp each (measured:
// bench/gpu/sandbox/moe_decode_experts.cu, gemv_mma.cu). Every thread returns having passed
// griddepcontrol.wait (a fused kernel may go on: gemv_combine.cu).
template <DType WT, bool SWIGLU, int B, int U>
__device__ __forceinline__ void gemv_mma_warp_tiles(const GemvParams& p) {
  constexpr int M = SWIGLU ? 2 : 1;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, g = lane / 4, c = lane % 4;
  const int64_t r0 = (int64_t(blockIdx.x) * B + warp) * kMmaRows;
  pdl_trigger();
  pdl_wait();  // the work items (moe_plan) or the ids (moe_route) come from earlier kernels
  if (r0 >= p.N) return;
  const WorkItem w = work_item(p);
  if (w.count == 0) return;
  const char* wbase[M];
  const float* sbase[M];
  item_weights<M>(p, w, wbase, sbase);
  const float* xrow = p.x + int64_t(assignment(p, w, min(g, w.count - 1)) / p.x_row_div) * p.x_stride;
  float acc[M][4];
  mma_tile_sums<WT, M, U>(wbase, sbase, 0, r0, p.N, p.K, xrow, g < w.count, 0, 1, true, acc);
  // acc[m][i]: row g + 8 (i / 2), token 2c + i % 2.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), t = 2 * c + i % 2;
    if (t >= w.count || r0 + row >= p.N) continue;
    float sum[M];
#pragma unroll
    for (int m = 0; m < M; ++m) sum[m] = acc[m][i];
    p.out[int64_t(assignment(p, w, t)) * p.out_stride + r0 + row] = mma_output<WT, M>(sum);
  }
}

template <DType WT, bool SWIGLU, int B, int U>
__global__ void __launch_bounds__(B * 32) gemv_mma_warp_kernel(GemvParams p) {
  gemv_mma_warp_tiles<WT, SWIGLU, B, U>(p);
}

// The per-warp tiles' shape: 4 tiles (64 rows) a block; loads 4 steps deep per matrix under SwiGLU (two
// matrices), 8 without: the fastest of the block widths and depths measured over 1-64 tokens
// (moe_decode_experts.cu; 2-8 tiles, 2-8 steps).
constexpr int kWarpTiles = 4;
template <bool SWIGLU>
constexpr int warp_tile_unroll() {
  return SWIGLU ? 4 : 8;
}
// Blocks along x of the per-warp kernels for N rows, B tiles a block.
inline unsigned warp_tile_blocks(int64_t N, int B = kWarpTiles) {
  return unsigned(((N + kMmaRows - 1) / kMmaRows + B - 1) / B);
}

// Whether a grouped FP8 pass runs on the per-warp tiles rather than gemv_mma_block: several assignments a
// pass (tile >= 2), or at one a pass at least kGemvWarpTilesFp8 of them (cuda_ops.h: batch 2 of a top-8
// model; batch 1 keeps the 8-warp block, as fast or faster there in a chain of launches). Decided on
// p.assignments, not the grid, so the plan's work items and moe_route's ids (gemv_combine) choose the same
// kernel: the same bits. BF16 keeps gemv_mma_block (and the CUDA cores at one a pass): the per-warp tiles
// were 3-4 % faster in the sandbox but made whole-model decode at batch 8 3 % slower (H100, bench/RESULTS.md,
// 2026-12-06).
inline bool warp_tiles_pay(const GemvParams& p, int tile) {
  return p.wdtype == DType::F8_E4M3 && grouped(p) && (tile >= 2 || p.assignments >= kGemvWarpTilesFp8);
}

template <DType WT>  // F8_E4M3 (a template so that only the TUs that launch it compile its kernels)
void launch_gemv_mma_warp(const GemvParams& p, cudaStream_t s) {
  static_assert(WT == DType::F8_E4M3);
  const dim3 grid(warp_tile_blocks(p.N), unsigned(p.grid_y), 1);
  if (p.swiglu)
    launch("gemv_mma_warp", gemv_mma_warp_kernel<WT, true, kWarpTiles, warp_tile_unroll<true>()>, grid,
           kWarpTiles * 32, 0, s, p);
  else
    launch("gemv_mma_warp", gemv_mma_warp_kernel<WT, false, kWarpTiles, warp_tile_unroll<false>()>, grid,
           kWarpTiles * 32, 0, s, p);
}

template <DType WT>
void launch_gemv_mma(const GemvParams& p, cudaStream_t s) {
  GemvParams q = p;
  const auto blocks_of = [](int64_t rows) { return unsigned((rows + kMmaRows - 1) / kMmaRows); };
  q.second.first_block = p.second.N > 0 ? blocks_of(p.N) : 0u;
  const dim3 grid(blocks_of(p.N) + blocks_of(p.second.N), unsigned(p.grid_y), 1);
  if (p.swiglu)
    launch("gemv_mma", gemv_mma_kernel<WT, true>, grid, 256, 0, s, q);
  else
    launch("gemv_mma", gemv_mma_kernel<WT, false>, grid, 256, 0, s, q);
}

}  // namespace gemv_detail

}  // namespace moe::cuda
