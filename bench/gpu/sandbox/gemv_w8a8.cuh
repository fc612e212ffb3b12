#pragma once
// Candidate, not in production (issue 14, batch-1 decode under W8A8): the routed experts' FP8 grouped GEMV at
// one assignment a pass on E4M3 x E4M3 tensor-core products (mma.sync m16n8k32, F32 accumulators), with x
// quantised per 1x128 tile beforehand as the W8A8 prefill and the grouped FP8 GEMM quantise it
// (backend/cuda/fp8_quant.cu), instead of gemv_mma_block's widening of every weight byte to BF16.
//
// Why: Nsight Compute on the ring candidate (gemv_ring.cuh, bench/RESULTS.md 2026-12-06) found its warps
// issuing once every 7 cycles with too few warps an SM to cover the widening: gemv_mma_block spends 3 integer
// operations on every 2 weights (byte permute, shift, mask) and 4 mmas on a lane's 32 weights of a step,
// about 75 instructions a step against the 2 loads that bring its bytes. Here a step is its 2 loads, one
// 16-byte load of x's codes, 2 mmas a matrix and the scale arithmetic: about 15.
//
// Block and fragments as gemv_mma_block: 16 rows of the item's expert, 8 warps taking the 64-column steps
// w, w + 8, ...; lane (g = lane / 4, c = lane % 4) loads the 16 bytes at step column 16c of rows g and g + 8
// and of token g's x codes. For mma j (0, 1) the words 2j, 2j + 1 are A's registers (row g: a0, a2; row g +
// 8: a1, a3) and B's (b0, b1): logical k 4c .. 4c + 3 and 16 + 4c .. 16 + 4c + 3 are physical columns 16c +
// 8j
// .. + 3 and 16c + 8j + 4 .. + 7 for A and B alike, so the k order agrees. Each step's two mmas start from
// zero and are added to the sums with the weight block's scale times token 2c's / 2c + 1's x scale (the
// accumulators' columns): FP32 promotion every 64 products.
//
// Measured (H100, 2026-12-06 23:24 UTC, bench/RESULTS.md): slower. One token's MoE layer at Moonlight's
// widths 49.14 us against gemv_mma_block's 45.92 (gate / up 27.20 against 27.14, down + combine 22.59
// against 18.73), the two quantising launches included; without them ("w8a8 noq") 44.10 (24.66 / 19.87). So
// the widening was worth ~2.5 us of gate / up's 27 and nothing on down, whose kernel here holds 108 registers
// (2 blocks an SM) against gemv_mma_block's 64 (4). In production (branch w8a8-gemv, kept locally)
// whole-model FP8 decode at batch 1 of the 8-layer llama.cpp-peer checkpoint ran 1004.2 / 984.0 tok/s against
// 1019.9 / 997.0 for main.
#include "backend/cuda/gemv.cuh"
#include "backend/cuda/tensor_core.cuh"
#include "common.cuh"

namespace sbx_w8a8 {

using namespace moe::cuda;
using namespace moe::cuda::gemv_detail;
using moe::DType;
using moe::cuda::GemvParams;

// x's codes [rows, ld] and scales (fp8_quant.cu's layout: tile kb of row r at s[kb * m4 + r]); row r is
// assignment / p.x_row_div.
struct XCodes {
  const uint8_t* q = nullptr;
  const float* s = nullptr;
  int64_t ld = 0, m4 = 0;
};

// d[16x8] += a[16x32] b[32x8], E4M3 operands (a row-major, b column-major fragments), F32 accumulators.
__device__ __forceinline__ void mma_e4m3(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

constexpr int kStep = 64, kUnroll = 4;

// One block (256 threads); every thread returns having passed griddepcontrol.wait (w8a8_combine_kernel goes
// on after it).
template <bool SWIGLU>
__device__ __forceinline__ void gemv_w8a8_block(const GemvParams& p, const XCodes& x) {
  constexpr int M = SWIGLU ? 2 : 1;
  __shared__ MmaWarpSums<M> red;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, g = lane / 4, c = lane % 4;
  const int64_t N = p.N, K = p.K, r0 = int64_t(blockIdx.x) * kMmaRows;
  pdl_trigger();
  pdl_wait();  // the ids (moe_route) and x's codes come from earlier kernels
  const WorkItem w = work_item(p);
  const int ntok = w.count;
  if (ntok == 0) return;
  const char* wbase[M];
  const float* sbase[M];
  item_weights<M>(p, w, wbase, sbase);
  const bool tok = g < ntok;
  const uint8_t* xc = x.q + int64_t(assignment(p, w, min(g, ntok - 1)) / p.x_row_div) * x.ld + c * 16;
  // x scale rows of the accumulators' token columns 2c, 2c + 1 (past ntok: a valid row whose products are 0).
  const int64_t s0row = assignment(p, w, min(2 * c, ntok - 1)) / p.x_row_div;
  const int64_t s1row = assignment(p, w, min(2 * c + 1, ntok - 1)) / p.x_row_div;
  const float* xs0p = x.s + s0row;
  const float* xs1p = x.s + s1row;
  const int64_t ra = min(r0 + g, N - 1), rb = min(r0 + g + 8, N - 1);
  const int64_t kblocks = (K + 127) / 128;
  const int nsteps = int(K / kStep);
  const char* wa[M];
  const char* wb[M];
  const float* srow[M];
  float acc[M][4];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    wa[m] = wbase[m] + ra * K + c * 16;
    wb[m] = wbase[m] + rb * K + c * 16;
    srow[m] = sbase[m] + (r0 / 128) * kblocks;
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[m][i] = 0.0f;
  }
  for (int s0 = warp; s0 < nsteps; s0 += kMmaWarps * kUnroll) {
    uint4 va[M][kUnroll], vb[M][kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int s = s0 + kMmaWarps * u;
      if (s < nsteps) {
#pragma unroll
        for (int m = 0; m < M; ++m) {
          va[m][u] = load_stream(wa[m] + s * kStep);
          vb[m][u] = load_stream(wb[m] + s * kStep);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int s = s0 + kMmaWarps * u;
      if (s >= nsteps) break;
      // x's codes after the weights' loads are issued (a hit in L1 / L2: every block reads the same x).
      const uint4 xv = tok ? __ldg(reinterpret_cast<const uint4*>(xc + s * kStep)) : make_uint4(0, 0, 0, 0);
      const int kb = (s * kStep) / 128;
      const float xs0 = __ldg(xs0p + kb * x.m4), xs1 = __ldg(xs1p + kb * x.m4);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        mma_e4m3(part, va[m][u].x, vb[m][u].x, va[m][u].y, vb[m][u].y, xv.x, xv.y);
        mma_e4m3(part, va[m][u].z, vb[m][u].z, va[m][u].w, vb[m][u].w, xv.z, xv.w);
        const float ws = __ldg(srow[m] + kb);
        const float sc0 = ws * xs0, sc1 = ws * xs1;
        acc[m][0] = fmaf(part[0], sc0, acc[m][0]);
        acc[m][1] = fmaf(part[1], sc1, acc[m][1]);
        acc[m][2] = fmaf(part[2], sc0, acc[m][2]);
        acc[m][3] = fmaf(part[3], sc1, acc[m][3]);
      }
    }
  }
  // The warps' sums in warp order, as gemv_mma_block adds them.
  mma_store_sums<M>(red, acc, warp, g, c);
  __syncthreads();
  if (threadIdx.x >= kMmaRows * 8) return;
  const int row = int(threadIdx.x) / 8, t = int(threadIdx.x) % 8;
  if (t >= ntok || r0 + row >= N) return;
  float sum[M];
  mma_warp_totals<M>(red, row, t, sum);
  // mma_output's BF16 form: no 2^-60 scale-back (x was not pre-scaled), SwiGLU under M == 2.
  p.out[int64_t(assignment(p, w, t)) * p.out_stride + r0 + row] = mma_output<DType::BF16, M>(sum);
}

template <bool SWIGLU>
__global__ void __launch_bounds__(256, 2) gemv_w8a8_kernel(GemvParams p, XCodes x) {
  gemv_w8a8_block<SWIGLU>(p, x);
}

// The down projection with the weighted combine (gemv_combine.cu's tail: the last block of a 16-row column).
__global__ void __launch_bounds__(256, 2) w8a8_combine_kernel(GemvParams p, XCodes x, GemvCombine c) {
  gemv_w8a8_block<false>(p, x);
  combine_tail(p, c, kMmaRows);
}

// Whether a pass runs here: FP8 weights in 128x128 blocks, one assignment a pass over moe_route's ids, K in
// 64-column steps.
inline bool w8a8_applies(const GemvParams& p, int tile) {
  return p.wdtype == DType::F8_E4M3 && p.ids != nullptr && tile == 1 && p.K % kStep == 0 &&
         p.block_n == 128 && p.block_k == 128;
}

inline dim3 w8a8_grid(const GemvParams& p) {
  return dim3(unsigned((p.N + kMmaRows - 1) / kMmaRows), unsigned(p.grid_y));
}

}  // namespace sbx_w8a8
