// E4M3 quantisation for the trainer's FP8 GEMMs (fp8_gemm.h, kernels.h's Fp8QuantArgs): one block per 128x128
// tile of the FP32 input, read once, written as E4M3 in the input's layout and/or transposed, with one FP32
// scale per 1x128 row tile, 128x1 column tile or 128x128 block (DeepSeek-V3's activation and weight schemes).
// scale = max(amax / 448, FLT_MIN) (448: E4M3's largest finite), 1 for an all-zero tile;
// q = e4m3_rn_satfinite(v * (1 / scale)), the inference engine's activation rule (backend/cuda/fp8_quant.cu).
#include <cuda_fp8.h>

#include <cfloat>

#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {

// 32 warps a tile: the kernel is bound by its instruction stream (Nsight Compute: 20-23 cycles an issued
// instruction), and many warps an SM hide the most of it (kMinBlocks below says how many tiles an SM holds).
constexpr int kTile = 128, kWarps = 32;
constexpr float kE4M3Max = 448.0f;

// At least FLT_MIN: amax / 448 of a tile of tiny values (amax < ~6e-43) rounds to 0, whose reciprocal is inf.
__device__ __forceinline__ float tile_scale(float amax) {
  return amax > 0.0f ? fmaxf(amax / kE4M3Max, FLT_MIN) : 1.0f;
}

// Four values to four E4M3 bytes (byte j = value j), each times inv = 1 / scale.
__device__ __forceinline__ uint32_t pack4(float a, float b, float c, float d, float inv) {
  auto code = [inv](float v) { return uint32_t(__nv_cvt_float_to_fp8(v * inv, __NV_SATFINITE, __NV_E4M3)); };
  return code(a) | code(b) << 8 | code(c) << 16 | code(d) << 24;
}

__device__ __forceinline__ float amax4(const float4& f) {
  return fmaxf(fmaxf(fabsf(f.x), fabsf(f.y)), fmaxf(fabsf(f.z), fabsf(f.w)));
}

__device__ __forceinline__ float comp(const float4& f, int k) {
  return k == 0 ? f.x : k == 1 ? f.y : k == 2 ? f.z : f.w;
}

// The staged tile (column modes): [128][128] floats as 16-byte chunks, chunk k of row r at chunk
// k ^ ((r / 4) % 8) of that row. A row's 32 chunks are stored by one warp (a permutation: conflict-free), and
// the column pass's warp reads one chunk column of 32 four-row groups, lane l rows 4l .. 4l+3: for each of
// those four loads, lanes l and l + 8 m are the only ones sharing banks (4 wavefronts for 512 bytes, the
// minimum). An unswizzled pitch of 129 floats read and wrote 4-way conflicted.
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * (kTile / 4) + (chunk ^ ((row >> 2) & 7));
}

// Block (bx, by, z) covers rows by*128 .. +127 and columns bx*128 .. +127 of matrix z of the batch. Thread
// (warp w, lane l) loads rows w, w+32, w+64, w+96 at columns 4l .. 4l+3 first (four 16-byte loads in flight),
// quantises those rows from its registers (row modes) and stages them in shared memory; in the column pass
// warp w takes columns 4w .. 4w+3, lane l rows 4l .. 4l+3 of them (a 4x4 sub-block), and writes four
// transposed rows of 128 codes, lane l's 4 bytes at rows 4l .. 4l+3.
// kCols: a column mode is set (the row modes alone compile without the tile and its registers). kMinBlocks:
// blocks an SM (2: 32 registers a thread, with some spilled to L1; 1: ~53 registers, half the warps);
// bench/gpu/sandbox/train_fp8_quant.cu times both.
template <bool kCols, int kMinBlocks>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks) fp8_quantize_kernel(Fp8QuantArgs a) {
  extern __shared__ float4 tile[];  // [128 rows][32 chunks], swizzled (column modes only)
  __shared__ float red[kWarps];
  constexpr int kRows = kTile / kWarps;  // rows a warp holds
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // 64-bit bases of the tile, 32-bit offsets inside it (fp8_quantize_args_ok: ldx, cols, qt_ld < 2^24): 32
  // registers a thread is the budget of two 1024-thread blocks an SM.
  const int64_t z = blockIdx.z, r0 = int64_t(blockIdx.y) * kTile, c0 = int64_t(blockIdx.x) * kTile;
  // rows of the tile in x and in the outputs (rows_in < 0 in a padding tile)
  const int rows_in = a.rows - r0 < kTile ? int(a.rows - r0) : kTile;
  const int rows_o = a.rows_out - r0 < kTile ? int(a.rows_out - r0) : kTile;
  const bool col_ok = c0 + lane * 4 < a.cols;  // cols % 4 == 0: a lane's four columns are all in or all out
  const int ldx = int(a.ldx), cols = int(a.cols);
  float4 v[kRows];
  {
    const float* x = a.x + z * a.x_bstride + r0 * a.ldx + c0 + lane * 4;
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int rr = warp + i * kWarps;
      v[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (rr < rows_in && col_ok) v[i] = __ldcs(reinterpret_cast<const float4*>(x + rr * ldx));
    }
  }
  uint8_t* q = a.row_mode ? a.q + z * a.q_bstride + r0 * a.cols + c0 + lane * 4 : nullptr;
  float* qs = a.row_mode ? a.qs + z * a.qs_bstride : nullptr;
  float bmax = 0.0f;
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int rr = warp + i * kWarps;
    if (kCols) tile[swz(rr, lane)] = v[i];
    const float am = warp_max(amax4(v[i]));
    bmax = fmaxf(bmax, am);
    if (a.row_mode == 1 && rr < rows_o) {
      const float sc = tile_scale(am);
      if (col_ok)
        *reinterpret_cast<uint32_t*>(q + rr * cols) = pack4(v[i].x, v[i].y, v[i].z, v[i].w, __frcp_rn(sc));
      if (lane == 0 && r0 + rr < a.qs_ld)
        a.qs[z * a.qs_bstride + int64_t(blockIdx.x) * a.qs_ld + r0 + rr] = sc;
    }
  }
  float bscale = 1.0f;
  if (a.row_mode == 2 || a.col_mode == 2) {
    if (lane == 0) red[warp] = bmax;
    __syncthreads();
    float blk = red[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) blk = fmaxf(blk, red[w]);
    bscale = tile_scale(blk);
  }
  if (a.row_mode == 2) {
    const float inv = __frcp_rn(bscale);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int rr = warp + i * kWarps;
      if (rr < rows_o && col_ok)
        *reinterpret_cast<uint32_t*>(q + rr * cols) = pack4(v[i].x, v[i].y, v[i].z, v[i].w, inv);
    }
    if (threadIdx.x == 0) qs[int64_t(blockIdx.y) * a.qs_ld + blockIdx.x] = bscale;
  }
  if (!kCols) return;
  __syncthreads();  // the staged tile is complete
  const int64_t col = c0 + warp * 4;
  if (col >= a.cols) return;  // cols % 16 == 0: the warp's four columns are all in or all out
  const int qt_ld = int(a.qt_ld > 0 ? a.qt_ld : a.rows_out);
  uint8_t* qt = a.qt + z * a.qt_bstride + col * qt_ld + r0 + lane * 4;
  float* qts = a.qts + z * a.qts_bstride;
#pragma unroll
  for (int j = 0; j < 4; ++j)
    v[j] = tile[swz(lane * 4 + j, warp)];  // rows 4 lane + j, columns col .. col + 3
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    float sc = bscale;
    if (a.col_mode == 1) {
      sc = tile_scale(warp_max(fmaxf(fmaxf(fabsf(comp(v[0], k)), fabsf(comp(v[1], k))),
                                     fmaxf(fabsf(comp(v[2], k)), fabsf(comp(v[3], k))))));
      if (lane == 0) qts[int64_t(blockIdx.y) * a.qts_ld + col + k] = sc;
    }
    if (lane * 4 < rows_o)  // rows_out % 16 == 0: a lane's four rows are all in or all out
      *reinterpret_cast<uint32_t*>(qt + k * qt_ld) =
          pack4(comp(v[0], k), comp(v[1], k), comp(v[2], k), comp(v[3], k), __frcp_rn(sc));
  }
  if (a.col_mode == 2 && threadIdx.x == 0) qts[int64_t(blockIdx.x) * a.qts_ld + blockIdx.y] = bscale;
}

// The instances production launches (see kMinBlocks). Measured by the sandbox (bench/RESULTS.md, 2026-12-05):
// the row modes ran faster on one block an SM (19.14 against 20.57 us on an H200 for x [4096, 2048]); the column
// modes were mixed between an H100 and an H200, and a layer's batched expert weights faster on two (421 against
// 466 us on the H200).
constexpr int kMinBlocksCols = 2, kMinBlocksRows = 1;

}  // namespace

bool fp8_quantize_args_ok(const Fp8QuantArgs& a) {
  const bool aligned = reinterpret_cast<uintptr_t>(a.x) % 16 == 0 && a.ldx % 4 == 0 && a.x_bstride % 4 == 0;
  const bool batch_ok = a.batch >= 1 && a.batch <= 65535 &&
                        (a.batch == 1 || (a.x_bstride >= a.rows * a.ldx &&
                                          (a.row_mode == 0 || (a.q_bstride > 0 && a.qs_bstride > 0)) &&
                                          (a.col_mode == 0 || (a.qt_bstride > 0 && a.qts_bstride > 0))));
  constexpr int64_t kMaxLd = int64_t(1) << 24;  // the kernel's 32-bit offsets inside a tile
  const bool small = a.ldx < kMaxLd && a.cols < kMaxLd && (a.qt_ld > 0 ? a.qt_ld : a.rows_out) < kMaxLd;
  return a.rows >= 0 && a.cols > 0 && a.cols % 16 == 0 && a.rows_out >= a.rows && a.rows_out % 16 == 0 &&
         small && aligned && batch_ok && (a.row_mode == 0 || (a.q && a.qs)) &&
         (a.col_mode == 0 || (a.qt && a.qts)) && a.row_mode >= 0 &&
         (a.qt_ld == 0 || (a.qt_ld >= a.rows_out && a.qt_ld % 4 == 0)) && a.row_mode <= 2 &&
         a.col_mode >= 0 && a.col_mode <= 2;
}

void fp8_quantize(const Fp8QuantArgs& a, cudaStream_t s) {
  if (a.rows_out == 0) return;
  // The staged tile, 64 KB (above the 48 KB default, opted in), only for the column pass: the row modes alone
  // fit more blocks on an SM without it.
  constexpr size_t kTileBytes = size_t(kTile) * kTile * sizeof(float);
  const dim3 grid(unsigned((a.cols + kTile - 1) / kTile), unsigned((a.rows_out + kTile - 1) / kTile),
                  unsigned(a.batch));
  if (a.col_mode != 0) {
    cudaFuncSetAttribute(fp8_quantize_kernel<true, kMinBlocksCols>,
                         cudaFuncAttributeMaxDynamicSharedMemorySize, int(kTileBytes));
    fp8_quantize_kernel<true, kMinBlocksCols><<<grid, kWarps * 32, kTileBytes, s>>>(a);
  } else {
    fp8_quantize_kernel<false, kMinBlocksRows><<<grid, kWarps * 32, 0, s>>>(a);
  }
}

}  // namespace moe::train::cuda
