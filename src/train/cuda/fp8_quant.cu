// E4M3 quantisation for the trainer's FP8 GEMMs (fp8_gemm.h, kernels.h's Fp8QuantArgs): one block per 128x128
// tile of the FP32 input, read once, written as E4M3 in the input's layout and/or transposed, with one FP32 scale
// per 1x128 row tile, 128x1 column tile or 128x128 block (DeepSeek-V3's activation and weight schemes).
// scale = max(amax / 448, FLT_MIN) (448: E4M3's largest finite), 1 for an all-zero tile; q = e4m3_rn_satfinite(v / scale).
#include <cuda_fp8.h>

#include <cfloat>

#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {

// 32 warps a tile, 4 rows (and in the column pass 4 columns) each: a 128x128 tile is a few thousand dependent
// instructions a warp (shuffles, IEEE divisions), and 8 warps a block left an SM too few warps to hide their
// latency (a 1408 x 2048 weight in both layouts took ~20 us on an H100, a sixth of the copy rate).
constexpr int kTile = 128, kPitch = kTile + 1, kWarps = 32;
constexpr float kE4M3Max = 448.0f;

// At least FLT_MIN: amax / 448 of a tile of tiny values (amax < ~6e-43) rounds to 0, and v / 0 is a NaN code.
__device__ __forceinline__ float tile_scale(float amax) {
  return amax > 0.0f ? fmaxf(amax / kE4M3Max, FLT_MIN) : 1.0f;
}

// Four values to four E4M3 bytes (little-endian in the word), each divided by scale (correctly rounded).
__device__ __forceinline__ uint32_t pack4(const float v[4], float scale) {
  uint32_t packed = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j)
    packed |= uint32_t(__nv_cvt_float_to_fp8(__fdiv_rn(v[j], scale), __NV_SATFINITE, __NV_E4M3)) << (8 * j);
  return packed;
}

__device__ __forceinline__ float amax4(const float v[4]) {
  return fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
}

// Block (bx, by) covers rows by*128 .. +127 and columns bx*128 .. +127. Thread (warp w, lane l) loads rows
// w, w+32, w+64, w+96 at columns 4l .. 4l+3 first, its four 16-byte loads in flight together, then quantises
// the rows from its registers (row modes) and stages the tile in shared memory for the column pass (lane l:
// rows 4l .. 4l+3 of columns w, w+32, ...), which only the column modes need.
__global__ void __launch_bounds__(kWarps * 32, 2) fp8_quantize_kernel(Fp8QuantArgs a) {
  extern __shared__ float tile[];  // [128][129]: the tile, for the column pass (column modes only)
  __shared__ float red[kWarps];
  constexpr int kRows = kTile / kWarps;  // rows a warp holds
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t r0 = int64_t(blockIdx.y) * kTile, c0 = int64_t(blockIdx.x) * kTile;
  const int64_t c = c0 + lane * 4;
  const bool col_ok = c < a.cols;  // cols % 4 == 0: a lane's four columns are all in or all out
  float v[kRows][4];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int64_t r = r0 + warp + i * kWarps;
    float4 f = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (r < a.rows && col_ok) f = __ldcs(reinterpret_cast<const float4*>(a.x + r * a.ldx + c));
    v[i][0] = f.x, v[i][1] = f.y, v[i][2] = f.z, v[i][3] = f.w;
  }
  float bmax = 0.0f;
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int rr = warp + i * kWarps;
    const int64_t r = r0 + rr;
    if (a.col_mode != 0)
#pragma unroll
      for (int j = 0; j < 4; ++j) tile[rr * kPitch + lane * 4 + j] = v[i][j];
    const float am = warp_max(amax4(v[i]));
    bmax = fmaxf(bmax, am);
    if (a.row_mode == 1 && r < a.rows_out) {
      const float sc = tile_scale(am);
      if (col_ok) *reinterpret_cast<uint32_t*>(a.q + r * a.cols + c) = pack4(v[i], sc);
      if (lane == 0 && r < a.qs_ld) a.qs[int64_t(blockIdx.x) * a.qs_ld + r] = sc;
    }
  }
  if (lane == 0) red[warp] = bmax;
  __syncthreads();
  float blk = red[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) blk = fmaxf(blk, red[w]);
  const float bscale = tile_scale(blk);
  if (a.row_mode == 2) {
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int64_t r = r0 + warp + i * kWarps;
      if (r < a.rows_out && col_ok) *reinterpret_cast<uint32_t*>(a.q + r * a.cols + c) = pack4(v[i], bscale);
    }
    if (threadIdx.x == 0) a.qs[int64_t(blockIdx.y) * a.qs_ld + blockIdx.x] = bscale;
  }
  if (a.col_mode != 0) {
    const int64_t r = r0 + lane * 4;  // rows_out % 4 == 0: a lane's four rows are all in or all out
    const int64_t qt_ld = a.qt_ld > 0 ? a.qt_ld : a.rows_out;
    for (int cc = warp; cc < kTile; cc += kWarps) {
      const int64_t col = c0 + cc;
      if (col >= a.cols) break;
      float t[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) t[j] = tile[(lane * 4 + j) * kPitch + cc];
      const float am = warp_max(amax4(t));
      const float sc = a.col_mode == 1 ? tile_scale(am) : bscale;
      if (r < a.rows_out) *reinterpret_cast<uint32_t*>(a.qt + col * qt_ld + r) = pack4(t, sc);
      if (a.col_mode == 1 && lane == 0) a.qts[int64_t(blockIdx.y) * a.qts_ld + col] = sc;
    }
    if (a.col_mode == 2 && threadIdx.x == 0) a.qts[int64_t(blockIdx.x) * a.qts_ld + blockIdx.y] = bscale;
  }
}

}  // namespace

bool fp8_quantize_args_ok(const Fp8QuantArgs& a) {
  const bool aligned = reinterpret_cast<uintptr_t>(a.x) % 16 == 0 && a.ldx % 4 == 0;
  return a.rows >= 0 && a.cols > 0 && a.cols % 16 == 0 && a.rows_out >= a.rows && a.rows_out % 16 == 0 &&
         aligned && (a.row_mode == 0 || (a.q && a.qs)) && (a.col_mode == 0 || (a.qt && a.qts)) &&
         a.row_mode >= 0 && (a.qt_ld == 0 || (a.qt_ld >= a.rows_out && a.qt_ld % 4 == 0)) &&
         a.row_mode <= 2 && a.col_mode >= 0 && a.col_mode <= 2;
}

void fp8_quantize(const Fp8QuantArgs& a, cudaStream_t s) {
  if (a.rows_out == 0) return;
  // The staged tile, 66 KB (above the 48 KB default, opted in), only for the column pass: the row modes alone
  // fit more blocks on an SM without it.
  const size_t smem = a.col_mode != 0 ? size_t(kTile) * kPitch * sizeof(float) : 0;
  cudaFuncSetAttribute(fp8_quantize_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       int(size_t(kTile) * kPitch * sizeof(float)));
  const dim3 grid(unsigned((a.cols + kTile - 1) / kTile), unsigned((a.rows_out + kTile - 1) / kTile));
  fp8_quantize_kernel<<<grid, kWarps * 32, smem, s>>>(a);
}

}  // namespace moe::train::cuda
