#pragma once
// Candidate, not in production (issue 14, decode's routed experts): the grouped GEMV over moe_route's ids at
// one assignment a pass (gate / up with SwiGLU; down, alone or with gemv_combine.cu's weighted combine) in
// persistent blocks that a ring of bulk copies keeps fed. Production runs gemv_mma_block there (FP8, batch 1)
// or gemv.cuh's CUDA-core kernel (BF16).
//
// The idea: gemv_mma_block runs one short block per 16 rows (one round of loads, then the next block's
// pointer chase: id -> expert table -> weights) in waves: 704 blocks for Moonlight's FP8 gate / up at one
// token, 1024 for its down, and those launches streamed at 1.0-1.7 TB/s of an H100's ~3 (bench/RESULTS.md,
// 2026-12-05 timelines). Here one block an SM walks a contiguous run of units (16 rows of one assignment's
// matrices); a producer warp copies the units' rows and the x slice they multiply into a ring of
// shared-memory stages (cp.async.bulk, one copy a row, completing on the stage's mbarrier) as far ahead as
// the ring allows: 3-7 stages, 110-200 KB in flight an SM.
//
// Arithmetic: gemv_mma_block's, step for step. A stage holds kc columns of the unit's 16 rows (all of K where
// it fits; else whole rounds of 8 warp steps, so that consumer warp w still takes the global steps w, w + 8,
// ... in order); the 8 consumer warps run mma_step on fragments read from shared memory and add their partial
// sums in warp order: the same bits as gemv_mma_block (the sandbox checks them). Rows of a stage are padded
// by 16 bytes, so the lanes' 16-byte reads of rows g and g + 8 fall in distinct banks.
//
// Units: without the combine, unit u = (assignment u / T16, rows 16 (u % T16) ..), T16 = ceil(N / 16); with
// it, unit u = (token u / T16, rows ..), which walks the token's k assignments in order and sums the combine
// in moe_combine's order of fmaf in registers (one block owns the rows: no counters, no last-block tail).
// Block b of G takes units [b U / G, (b + 1) U / G). Ids -1 are skipped (no expert, y not written).
//
// Measured (H100, 2026-12-06, bench/RESULTS.md). First version (consumers read x from global memory a step at a
// time): FP8 at one token 51.7 us a MoE layer against gemv_mma_block's 46.2 (down + combine 23.4 against 18.7);
// whole-model FP8 batch 1 981-985 tok/s against 1034-1040; BF16 over work items at batch 8 (a variant since
// removed) -13 % in the whole model. This version (x copied into each stage with the weights): 48.6 against 46.0
// (gate / up 31.8 against 27.1: a stage holds 1536 of 2048 columns; down + combine 17.2 against 18.7, the fastest
// measured); BF16 at one token 62.3 against the CUDA-core kernel's 53.8. Nsight Compute: 9 warps an SM (one
// block), a warp issuing every 7 cycles: too few warps to issue the E4M3 -> BF16 conversion and the mma at the
// memory's rate. racecheck reported hazards between a stage's bulk copies and the previous use's shared-memory
// reads, which only the stage's "empty" mbarrier orders; whether the tool follows that ordering is not known.
#include "backend/cuda/gemv_mma.cuh"
#include "backend/cuda/tensor_core.cuh"

namespace sbx_ring {

using namespace moe::cuda;
using namespace moe::cuda::gemv_detail;
using moe::DType;
using moe::cuda::GemvParams;

constexpr int kRingWarps = 8;                          // consumer warps: gemv_mma_block's K split
constexpr int kRingThreads = (kRingWarps + 1) * 32;    // and one producer warp
constexpr int64_t kRingRowPad = 16;                    // bytes after each row of a stage
constexpr int64_t kRingSmem = 200 << 10;               // the stages' shared memory
constexpr int kRingMaxStages = 8, kRingMinStages = 3;  // stages a block (mbarrier pairs)

// A launch's stage layout: kc columns a stage (chunks of them per unit), `stages` stages of `stage_bytes`.
struct RingShape {
  int64_t kc = 0, row_bytes = 0;
  int chunks = 0, stages = 0;
  int64_t stage_bytes = 0;
};

inline RingShape ring_shape(const GemvParams& p) {
  RingShape r;
  const bool fp8 = p.wdtype == DType::F8_E4M3;
  const int64_t M = p.swiglu ? 2 : 1, rows = M * kMmaRows, eb = fp8 ? 1 : 2;
  const int64_t round = kMmaWarps * (fp8 ? mma_step_cols<DType::F8_E4M3>() : mma_step_cols<DType::BF16>());
  // A stage: the rows, then the x slice (F32), 128-byte aligned.
  const auto stage_of = [&](int64_t kc) {
    return (rows * (kc * eb + kRingRowPad) + kc * 4 + 127) / 128 * 128;
  };
  r.kc = p.K;
  if (stage_of(r.kc) * kRingMinStages > kRingSmem)
    r.kc = ((kRingSmem / kRingMinStages - rows * kRingRowPad - 127) / (rows * eb + 4) / round) * round;
  r.row_bytes = r.kc * eb + kRingRowPad;
  r.chunks = int((p.K + r.kc - 1) / r.kc);
  r.stage_bytes = stage_of(r.kc);
  r.stages = int(std::min<int64_t>(kRingMaxStages, kRingSmem / r.stage_bytes));
  return r;
}

// The combine of gemv_combine (ids only; COMBINE = false: y only).
struct RingCombine {
  const float* w = nullptr;
  const float* plus = nullptr;
  float* out = nullptr;
  int32_t k = 1;
};

__device__ __forceinline__ void ring_consumers_sync() {
  asm volatile("bar.sync 1, %0;" ::"n"(kRingWarps * 32));
}

// The block's walk, the same for the producer and the consumers so that both see the same stages: for each of
// its units and each of the unit's assignments (k > 1: the combine's), f(unit, assignment a, expert e (-1:
// none), j, row tile x).
template <typename F>
__device__ __forceinline__ void ring_walk(const GemvParams& p, int32_t k, int64_t units, const F& f) {
  const int64_t b = blockIdx.x, G = gridDim.x, u0 = b * units / G, u1 = (b + 1) * units / G;
  const int64_t T16 = (p.N + kMmaRows - 1) / kMmaRows;
  for (int64_t u = u0; u < u1; ++u)
    for (int j = 0; j < k; ++j) {
      const int a = int((u / T16) * k + j);
      f(u, a, p.ids[a], j, u % T16);
    }
}

template <DType WT, bool SWIGLU, bool COMBINE>
__global__ void __launch_bounds__(kRingThreads, 1)
    gemv_ring_kernel(GemvParams p, RingCombine cb, RingShape sh) {
  constexpr int M = SWIGLU ? 2 : 1, kStep = mma_step_cols<WT>();
  constexpr bool kFp8 = WT == DType::F8_E4M3;
  constexpr int64_t kEb = kFp8 ? 1 : 2, kVals = kFp8 ? 16 : 8;
  extern __shared__ __align__(128) unsigned char ring[];      // [stages][M][16][row_bytes]
  __shared__ __align__(8) uint64_t bars[2 * kRingMaxStages];  // full[s], then empty[s]
  __shared__ float red[2][M][kRingWarps][kMmaRows];           // by assignment parity (see the barrier below)
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t N = p.N, K = p.K, kc = sh.kc, T16 = (N + kMmaRows - 1) / kMmaRows;
  const int32_t k = COMBINE ? cb.k : 1;
  const uint32_t full0 = smem_addr(&bars[0]), empty0 = smem_addr(&bars[kRingMaxStages]);
  if (threadIdx.x == 0) {
    for (int s = 0; s < sh.stages; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, kRingWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  pdl_trigger();
  pdl_wait();  // the ids (moe_route) and x come from earlier kernels
  const int64_t units = (COMBINE ? p.grid_y / k : p.grid_y) * T16;

  if (warp == kRingWarps) {  // the producer: one lane issues every copy
    if (lane != 0) return;
    int64_t i = 0;
    ring_walk(p, k, units, [&](int64_t, int a, int e, int, int64_t x) {
      if (e < 0) return;
      const int64_t r0 = x * kMmaRows, rows = min(int64_t(kMmaRows), N - r0);
      const char* wm[M];
#pragma unroll
      for (int m = 0; m < M; ++m) wm[m] = static_cast<const char*>(p.table[e * 6 + p.matrix + m]);
      for (int c = 0; c < sh.chunks; ++c, ++i) {
        const int s = int(i % sh.stages);
        const int64_t n = i / sh.stages, cols = min(kc, K - c * kc);
        if (n > 0) mbar_wait(empty0 + 8 * s, uint32_t((n - 1) & 1));
        const uint32_t full = full0 + 8 * s, dst = smem_addr(ring + s * sh.stage_bytes);
        mbar_expect_tx(full, uint32_t(M * rows * cols * kEb + cols * 4));
        bulk_load(dst + uint32_t(M * kMmaRows * sh.row_bytes),
                  p.x + int64_t(a / p.x_row_div) * p.x_stride + c * kc, uint32_t(cols * 4), full);
#pragma unroll
        for (int m = 0; m < M; ++m)
          for (int64_t r = 0; r < rows; ++r)
            bulk_load(dst + uint32_t((m * kMmaRows + r) * sh.row_bytes),
                      wm[m] + ((r0 + r) * K + c * kc) * kEb, uint32_t(cols * kEb), full);
      }
    });
    return;
  }

  // The consumers: lane (g, c4) as in gemv_mma.cuh (token column g, rows g and g + 8); the one assignment is
  // token column 0 (lanes g == 0 give x, lanes c4 == 0 hold its sums).
  const int g = lane / 4, c4 = lane % 4, row = int(threadIdx.x);  // row: the sums' thread for that row
  const int64_t kblocks = (K + 127) / 128;
  int64_t i = 0;
  int q = 0;          // assignments computed (red's buffer)
  float cacc = 0.0f;  // COMBINE: thread row's sum for its row of the current unit
  ring_walk(p, k, units, [&](int64_t u, int a, int e, int j, int64_t x) {
    const int64_t r0 = x * kMmaRows, rows = min(int64_t(kMmaRows), N - r0);
    if (COMBINE && j == 0) cacc = 0.0f;
    if (e >= 0) {
      const int ra = int(min(int64_t(g), rows - 1)), rb = int(min(int64_t(g + 8), rows - 1));
      const float* srow[M];
      float acc[M][4];
#pragma unroll
      for (int m = 0; m < M; ++m) {
        srow[m] = kFp8 ? static_cast<const float*>(p.table[e * 6 + 3 + p.matrix + m]) + (r0 / 128) * kblocks
                       : nullptr;
#pragma unroll
        for (int t = 0; t < 4; ++t) acc[m][t] = 0.0f;
      }
      for (int c = 0; c < sh.chunks; ++c, ++i) {
        const int s = int(i % sh.stages);
        const int64_t steps = min(kc, K - c * kc) / kStep;
        const unsigned char* st = ring + s * sh.stage_bytes + c4 * 16;
        const float* xs =
            reinterpret_cast<const float*>(ring + s * sh.stage_bytes + M * kMmaRows * sh.row_bytes) +
            c4 * kVals;  // the stage's x slice at the lane's values
        mbar_wait(full0 + 8 * s, uint32_t((i / sh.stages) & 1));
        for (int64_t ls = warp; ls < steps; ls += kRingWarps) {
          const int64_t gs = c * (kc / kStep) + ls;  // the global step: kc is all of K or whole rounds
          uint32_t xb[kVals / 2];
          mma_x_fragments<WT, true>(xs + ls * kStep, g == 0, xb);
#pragma unroll
          for (int m = 0; m < M; ++m) {
            const unsigned char* t = st + m * kMmaRows * sh.row_bytes + ls * kStep * kEb;
            mma_step<WT>(*reinterpret_cast<const uint4*>(t + ra * sh.row_bytes),
                         *reinterpret_cast<const uint4*>(t + rb * sh.row_bytes), xb,
                         kFp8 ? srow[m] + (gs * kStep) / 128 : nullptr, acc[m]);
          }
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(empty0 + 8 * s);
      }
      // acc[m]: (row g, tokens 2c4, 2c4 + 1), (row g + 8, ...): token 0 in the lanes of c4 == 0.
      if (c4 == 0) {
#pragma unroll
        for (int m = 0; m < M; ++m) {
          red[q & 1][m][warp][g] = acc[m][0];
          red[q & 1][m][warp][g + 8] = acc[m][2];
        }
      }
      // One barrier a computed assignment: buffer q & 1 is written again at q + 2, after barrier q + 1, which
      // the readers of q pass only once they have read it.
      ring_consumers_sync();
      if (row < rows) {
        float sum[M];
#pragma unroll
        for (int m = 0; m < M; ++m) {
          sum[m] = 0.0f;
#pragma unroll
          for (int v = 0; v < kRingWarps; ++v) sum[m] += red[q & 1][m][v][row];
        }
        const float v = mma_output<WT, M>(sum);
        p.out[int64_t(a) * p.out_stride + r0 + row] = v;
        if constexpr (COMBINE)
          if (cb.w[a] != 0.0f) cacc = fmaf(cb.w[a], v, cacc);  // moe_combine's order
      }
      ++q;
    }
    if constexpr (COMBINE) {  // thread row writes the unit's combined row after its last assignment
      if (j == k - 1 && row < rows) {
        const int64_t o = (u / T16) * N + r0 + row;
        cb.out[o] = cb.plus ? cb.plus[o] + cacc : cacc;
      }
    }
  });
}

template <DType WT, bool SWIGLU, bool COMBINE>
void launch_ring_kernel(const GemvParams& p, const RingCombine& cb, cudaStream_t s) {
  const RingShape sh = ring_shape(p);
  int dev = 0, sms = 0;
  check(cudaGetDevice(&dev), "gemv_ring: device");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "gemv_ring: SM count");
  // Blocks: one an SM, fewer where the units are fewer.
  const int64_t units = (COMBINE ? p.grid_y / cb.k : p.grid_y) * ((p.N + kMmaRows - 1) / kMmaRows);
  const unsigned blocks = unsigned(std::max<int64_t>(1, std::min<int64_t>(sms, units)));
  const size_t smem = size_t(sh.stages) * size_t(sh.stage_bytes);
  auto* kernel = gemv_ring_kernel<WT, SWIGLU, COMBINE>;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
        "gemv_ring: smem");
  launch("gemv_ring", kernel, dim3(blocks), kRingThreads, smem, s, p, cb, sh);
}

// The plain pass (gate / up with SwiGLU, or down into y).
template <DType WT>
void launch_gemv_ring(const GemvParams& p, cudaStream_t s) {
  if (p.swiglu)
    launch_ring_kernel<WT, true, false>(p, RingCombine{}, s);
  else
    launch_ring_kernel<WT, false, false>(p, RingCombine{}, s);
}

}  // namespace sbx_ring
