#pragma once
// Candidate, not in production (issue 14, batch-1 decode): the routed experts' FP8 grouped GEMV at one
// assignment a pass and fewer than kGemvWarpTilesFp8 assignments a step (where production runs
// gemv_mma_block), with each block's weights brought into shared memory by the TMA unit instead of by its
// threads' loads. Block (x, item) takes rows x * 16 .. x * 16 + 15 of its assignment's expert; 16 full weight
// rows are contiguous in memory (16 x K bytes), so one bulk copy a matrix (cp.async.bulk, issued by one
// thread, completing on an mbarrier) fetches the tile. The 8 warps then run gemv_mma_block's steps (warp w:
// the 64-column steps w, w + 8, ..., fragments and mmas as in gemv_mma.cuh, read from shared memory) and sum
// in shared memory in warp order: the same bits as gemv_mma_block.
//
// Why: gemv_mma_block holds its bytes in flight in registers (128 a thread under SwiGLU, 2 blocks an SM) and
// issues one round of loads a block, in waves (704 blocks for Moonlight's gate / up at one token, 1024 for
// down); here the bytes in flight cost shared memory (64 KB a block under SwiGLU at K 2048, 22.5 KB for down
// at K 1408) and 70 registers, so 3 blocks an SM stream at once under SwiGLU, and each request is one
// contiguous copy.
//
// Measured (H100, 2026-12-06 08:52-09:32 UTC, bench/RESULTS.md): one token's MoE layer at Moonlight's widths
// 43.1-43.5 us against gemv_mma_block's 45.4-46.1 in four calls (-5 %); in production (gate / up, and down
// with the combine), whole-model batch-1 decode of the 8-layer llama.cpp-peer FP8 checkpoint 1032.5 / 1040.3
// tok/s against 1041.9 for the build before it: the ~1.9 % the sandbox predicts was not seen, so it stayed
// here. Two further variants were slower: K in 1 KB chunks of row copies through a two-stage ring (for any
// K; 49.5 us, 46.1 with the early fetch below), and the down launch fetching its weights before
// griddepcontrol.wait behind a gate / up that signals its dependents only after its own wait (the late signal
// cost gate / up what the early fetch saved down: 44.9 us).
#include "backend/cuda/gemv.cuh"
#include "backend/cuda/tensor_core.cuh"
#include "common.cuh"

namespace sbx_tma {

using namespace moe::cuda;
using namespace moe::cuda::gemv_detail;
using moe::DType;
using moe::cuda::GemvParams;

constexpr int64_t kTmaTileBytes = 64 << 10;  // the largest shared tile: M matrices x 16 rows x K

// Shared memory of a block: M matrices x 16 rows x K bytes.
inline size_t tma_tile_bytes(const GemvParams& p) { return size_t(p.swiglu ? 2 : 1) * 16 * size_t(p.K); }

// Whether an FP8 grouped pass (mma_gemv_ok) would run here rather than on gemv_mma_block: one assignment a
// pass, below the per-warp tiles' threshold (warp_tiles_pay), and a tile that fits kTmaTileBytes
// (DeepSeek-V3's gate / up at K 7168 does not).
inline bool tma_tiles_pay(const GemvParams& p, int tile) {
  return p.wdtype == DType::F8_E4M3 && grouped(p) && tile == 1 && !warp_tiles_pay(p, tile) &&
         int64_t(tma_tile_bytes(p)) <= kTmaTileBytes;
}

// One block (256 threads). Every thread returns from it having passed griddepcontrol.wait (a fused kernel may
// go on: tma_combine_kernel).
template <bool SWIGLU>
__device__ __forceinline__ void gemv_tma_block(const GemvParams& p) {
  constexpr int M = SWIGLU ? 2 : 1, W = kMmaWarps;
  extern __shared__ __align__(128) unsigned char tile[];  // [M][16][K] E4M3 codes
  __shared__ __align__(8) uint64_t bar;
  __shared__ float red[M][W][kMmaRows];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, g = lane / 4, c = lane % 4;
  const int64_t N = p.N, K = p.K, r0 = int64_t(blockIdx.x) * kMmaRows;
  pdl_trigger();
  pdl_wait();  // the work items (moe_plan) or the ids (moe_route), and x, come from earlier kernels
  const WorkItem w = work_item(p);
  if (w.count == 0) return;  // the same for the whole block
  const char* wbase[M];
  const float* sbase[M];
  item_weights<M>(p, w, wbase, sbase);
  const int rows = int(min(int64_t(kMmaRows), N - r0));
  const uint32_t b = smem_addr(&bar);
  if (threadIdx.x == 0) {
    mbar_init(b, 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    mbar_expect_tx(b, uint32_t(M * rows * K));
#pragma unroll
    for (int m = 0; m < M; ++m)
      bulk_load(smem_addr(tile + m * 16 * K), wbase[m] + r0 * K, uint32_t(rows * K), b);
  }
  __syncthreads();  // the mbarrier is initialised before anyone waits on it
  const float* xrow = p.x + int64_t(assignment(p, w, 0) / p.x_row_div) * p.x_stride;
  const bool tok = g == 0;  // the mma's token column 0: the one assignment
  const int ra = min(g, rows - 1), rb = min(g + 8, rows - 1);
  const int64_t kblocks = (K + 127) / 128, nsteps = K / 64;
  const float* srow[M];
  float acc[M][4];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    srow[m] = sbase[m] + (r0 / 128) * kblocks;  // 16 rows inside one 128-row block
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[m][i] = 0.0f;
  }
  mbar_wait(b, 0);
  for (int64_t s = warp; s < nsteps; s += W) {
    uint32_t xb[8];
    mma_x_fragments<DType::F8_E4M3>(xrow + s * 64 + c * 16, tok, xb);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const unsigned char* t = tile + m * 16 * K + s * 64 + c * 16;
      mma_step<DType::F8_E4M3>(*reinterpret_cast<const uint4*>(t + ra * K),
                               *reinterpret_cast<const uint4*>(t + rb * K), xb, srow[m] + (s * 64) / 128,
                               acc[m]);
    }
  }
  // acc[m]: (row g, tokens 2c, 2c + 1), (row g + 8, ...): token 0 is in the lanes of c == 0.
  if (c == 0) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      red[m][warp][g] = acc[m][0];
      red[m][warp][g + 8] = acc[m][2];
    }
  }
  __syncthreads();
  if (int(threadIdx.x) >= rows) return;
  const int row = int(threadIdx.x);
  float sum[M];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    sum[m] = 0.0f;
#pragma unroll
    for (int k = 0; k < W; ++k) sum[m] += red[m][k][row];
  }
  p.out[int64_t(assignment(p, w, 0)) * p.out_stride + r0 + row] = mma_output<DType::F8_E4M3, M>(sum);
}

// 3 blocks an SM under SwiGLU (Moonlight's 64 KB tiles; 70 registers), 4 without.
template <bool SWIGLU>
__global__ void __launch_bounds__(256, SWIGLU ? 3 : 4) gemv_tma_kernel(GemvParams p) {
  gemv_tma_block<SWIGLU>(p);
}
// The down projection with gemv_combine.cu's weighted combine after it.
__global__ void __launch_bounds__(256, 4) tma_combine_kernel(GemvParams p, moe::cuda::GemvCombine c) {
  gemv_tma_block<false>(p);
  combine_tail(p, c, kMmaRows);
}

// A launch over tma_tiles_pay's parameters (gemv_tma_kernel, or tma_combine_kernel): blocks of 16 rows by
// work items, the tile's shared memory opted into past the 48 KB default (per launch: the attribute is the
// current device's).
template <typename... Params, typename... Args>
void launch_tma(void (*kernel)(Params...), const GemvParams& p, cudaStream_t s, Args&&... args) {
  const size_t smem = tma_tile_bytes(p);
  SBX_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  sbx::launch(true, kernel, dim3(unsigned((p.N + kMmaRows - 1) / kMmaRows), unsigned(p.grid_y)), 256, smem, s,
              p, std::forward<Args>(args)...);
}

}  // namespace sbx_tma
