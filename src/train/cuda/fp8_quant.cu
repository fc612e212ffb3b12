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

constexpr int kTile = 128, kWarps = 8;
constexpr float kE4M3Max = 448.0f;

// At least FLT_MIN: amax / 448 of a tile of tiny values (amax < ~6e-43) rounds to 0, and v / 0 is a NaN code.
__device__ __forceinline__ float tile_scale(float amax) {
  return amax > 0.0f ? fmaxf(amax / kE4M3Max, FLT_MIN) : 1.0f;
}

// Four values to four E4M3 bytes (byte j = value j), each divided by scale (correctly rounded).
__device__ __forceinline__ uint32_t pack4(float a, float b, float c, float d, float scale) {
  auto code = [scale](float v) {
    return uint32_t(__nv_cvt_float_to_fp8(__fdiv_rn(v, scale), __NV_SATFINITE, __NV_E4M3));
  };
  return code(a) | code(b) << 8 | code(c) << 16 | code(d) << 24;
}

__device__ __forceinline__ float amax4(const float4& f) {
  return fmaxf(fmaxf(fabsf(f.x), fabsf(f.y)), fmaxf(fabsf(f.z), fabsf(f.w)));
}

// Block (bx, by) covers rows by*128 .. +127 and columns bx*128 .. +127. Thread (warp w, lane l) holds four
// 4x4 sub-blocks in registers: rows 32 i + 4 w .. +3 (i < 4) at columns 4 l .. 4 l + 3, its sixteen 16-byte
// loads in flight together. A row of the tile lies in one warp, a column in one lane of each warp, so
//   - a row's 1x128 scale is one warp reduction;
//   - a column's 128x1 scale is the thread's own maximum over its 16 rows, then the 8 warps' in 4 KB of
//   shared
//     memory (no shuffles);
//   - the 128x128 block scale is one warp reduction and an 8-value step through shared memory;
//   - under a block scale the transposed layout's codes are the row layout's, moved by byte permutes (one
//     division per value, not one per layout).
// The staged-tile kernel this replaced (every row and column reduced by shuffles, the FP32 tile in 66 KB of
// shared memory, every value divided once per layout) ran at about 1 TB/s on an H100; it lives on in
// bench/gpu/sandbox/train_fp8_quant.cu, which checks this one against it byte for byte.
__global__ void __launch_bounds__(kWarps * 32) fp8_quantize_kernel(Fp8QuantArgs a) {
  __shared__ float colmax[kWarps][kTile];  // column mode 1: each warp's column maxima
  __shared__ float red[kWarps];            // block modes: each warp's maximum
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  const int64_t r0 = int64_t(blockIdx.y) * kTile, c0 = int64_t(blockIdx.x) * kTile, c = c0 + 4 * l;
  const bool col_ok = c < a.cols;  // cols % 4 == 0: a lane's four columns are all in or all out
  float4 v[4][4];                  // [i][j]: row r0 + 32 i + 4 w + j, columns c .. c + 3
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t r = r0 + 32 * i + 4 * w + j;
      v[i][j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r < a.rows && col_ok) v[i][j] = __ldcs(reinterpret_cast<const float4*>(a.x + r * a.ldx + c));
    }
  const int64_t qt_ld = a.qt_ld > 0 ? a.qt_ld : a.rows_out;
  if (a.row_mode == 1) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t r = r0 + 32 * i + 4 * w + j;
        const float s = tile_scale(warp_max(amax4(v[i][j])));
        if (r >= a.rows_out) continue;
        if (col_ok)
          *reinterpret_cast<uint32_t*>(a.q + r * a.cols + c) =
              pack4(v[i][j].x, v[i][j].y, v[i][j].z, v[i][j].w, s);
        if (l == 0 && r < a.qs_ld) a.qs[int64_t(blockIdx.x) * a.qs_ld + r] = s;
      }
  }
  if (a.row_mode == 2 || a.col_mode == 2) {
    float m = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) m = fmaxf(m, amax4(v[i][j]));
    m = warp_max(m);
    if (l == 0) red[w] = m;
    __syncthreads();
    float blk = red[0];
#pragma unroll
    for (int k = 1; k < kWarps; ++k) blk = fmaxf(blk, red[k]);
    const float s = tile_scale(blk);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      uint32_t rw[4];  // row j's four codes
#pragma unroll
      for (int j = 0; j < 4; ++j) rw[j] = pack4(v[i][j].x, v[i][j].y, v[i][j].z, v[i][j].w, s);
      const int64_t r = r0 + 32 * i + 4 * w;  // rows_out % 16 == 0: the four rows are all in or all out
      if (r >= a.rows_out || !col_ok) continue;
      if (a.row_mode == 2)
#pragma unroll
        for (int j = 0; j < 4; ++j) *reinterpret_cast<uint32_t*>(a.q + (r + j) * a.cols + c) = rw[j];
      if (a.col_mode == 2) {  // column k of the sub-block: byte k of each row's word, rows in byte order
        const uint32_t lo01 = __byte_perm(rw[0], rw[1], 0x5140), lo23 = __byte_perm(rw[2], rw[3], 0x5140);
        const uint32_t hi01 = __byte_perm(rw[0], rw[1], 0x7362), hi23 = __byte_perm(rw[2], rw[3], 0x7362);
        const uint32_t cw[4] = {__byte_perm(lo01, lo23, 0x5410), __byte_perm(lo01, lo23, 0x7632),
                                __byte_perm(hi01, hi23, 0x5410), __byte_perm(hi01, hi23, 0x7632)};
#pragma unroll
        for (int k = 0; k < 4; ++k) *reinterpret_cast<uint32_t*>(a.qt + (c + k) * qt_ld + r) = cw[k];
      }
    }
    if (threadIdx.x == 0) {
      if (a.row_mode == 2) a.qs[int64_t(blockIdx.y) * a.qs_ld + blockIdx.x] = s;
      if (a.col_mode == 2) a.qts[int64_t(blockIdx.x) * a.qts_ld + blockIdx.y] = s;
    }
  }
  if (a.col_mode == 1) {
    float m[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        m[0] = fmaxf(m[0], fabsf(v[i][j].x)), m[1] = fmaxf(m[1], fabsf(v[i][j].y));
        m[2] = fmaxf(m[2], fabsf(v[i][j].z)), m[3] = fmaxf(m[3], fabsf(v[i][j].w));
      }
#pragma unroll
    for (int k = 0; k < 4; ++k) colmax[w][4 * l + k] = m[k];
    __syncthreads();
    float s[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      float cm = colmax[0][4 * l + k];
#pragma unroll
      for (int ww = 1; ww < kWarps; ++ww) cm = fmaxf(cm, colmax[ww][4 * l + k]);
      s[k] = tile_scale(cm);
      if (w == 0 && col_ok) a.qts[int64_t(blockIdx.y) * a.qts_ld + c + k] = s[k];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t r = r0 + 32 * i + 4 * w;
      if (r >= a.rows_out || !col_ok) continue;
      uint8_t* dst = a.qt + c * qt_ld + r;
      *reinterpret_cast<uint32_t*>(dst) = pack4(v[i][0].x, v[i][1].x, v[i][2].x, v[i][3].x, s[0]);
      *reinterpret_cast<uint32_t*>(dst + qt_ld) = pack4(v[i][0].y, v[i][1].y, v[i][2].y, v[i][3].y, s[1]);
      *reinterpret_cast<uint32_t*>(dst + 2 * qt_ld) = pack4(v[i][0].z, v[i][1].z, v[i][2].z, v[i][3].z, s[2]);
      *reinterpret_cast<uint32_t*>(dst + 3 * qt_ld) = pack4(v[i][0].w, v[i][1].w, v[i][2].w, v[i][3].w, s[3]);
    }
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
  const dim3 grid(unsigned((a.cols + kTile - 1) / kTile), unsigned((a.rows_out + kTile - 1) / kTile));
  fp8_quantize_kernel<<<grid, kWarps * 32, 0, s>>>(a);
}

}  // namespace moe::train::cuda
