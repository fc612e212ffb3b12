// Activation quantisation for the FP8 x FP8 GEMMs (gemm_fp8.h): F32 rows to E4M3 with one F32 scale per 1x128
// tile (DeepSeek-V3's activation scheme), and the re-layout of 128x128 weight-scale grids whose column count
// cuBLASLt wants padded to a multiple of 4 (dense linears on gemm_fp8.h).
//
// Scale layout (what cuBLASLt's CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F takes for the token operand): for a
// segment of m rows starting at row o with scales at sbase, tile (i, kb) of row o + i has its scale at
// sbase + kb * m + i, i.e. the [m, K/128] scale matrix stored column-major (rows fastest). Segments are the
// per-expert row ranges of the routed experts (one segment covering all rows for a dense GEMM).
#include <algorithm>
#include <cfloat>

#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

namespace {

constexpr int kQuantWarps = 8;  // warps per block
constexpr int kQuantTiles = 4;  // (row, 128-column) tiles per warp, their loads in flight together

// The 4 values of tile (output row i, K block kb) a lane reads (k0 .. k0 + 3 of its row; zeros past K).
__device__ __forceinline__ void quant_load(const Fp8QuantParams& p, int64_t i, int32_t kb, int lane,
                                           float v[4]) {
  const int64_t src_row = p.rows ? int64_t(p.rows[i] / p.row_div) : i;
  const int64_t k0 = int64_t(kb) * 128 + lane * 4, off = src_row * p.ldx + k0;
  const bool whole = k0 + 4 <= p.K && p.ldx % 4 == 0;  // one vector load (F32 x4 or BF16 x4)
  if (whole && p.x_bf16) {
    const uint2 b = *reinterpret_cast<const uint2*>(p.x_bf16 + off);
    v[0] = bf16_bits_to_float(b.x & 0xffffu), v[1] = bf16_bits_to_float(b.x >> 16);
    v[2] = bf16_bits_to_float(b.y & 0xffffu), v[3] = bf16_bits_to_float(b.y >> 16);
  } else if (whole) {
    const float4 f = *reinterpret_cast<const float4*>(p.x + off);
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      v[j] = k0 + j >= p.K ? 0.0f : p.x_bf16 ? bf16_bits_to_float(p.x_bf16[off + j]) : p.x[off + j];
  }
}

// Tile `tile` (output row i, K block kb) from the lane's 4 values: scale, codes, the scale's slot.
__device__ __forceinline__ void quant_store(const Fp8QuantParams& p, int64_t i, int32_t kb, int lane,
                                            const float v[4]) {
  const int64_t k0 = int64_t(kb) * 128 + lane * 4;
  float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
  amax = warp_max(amax);
  // scale = amax / 448 so the largest value maps to E4M3's largest finite; an all-zero tile gets scale 1. At
  // least FLT_MIN: a tile of tiny values (amax < 448 FLT_MIN) would get a subnormal scale whose reciprocal is
  // infinite (0 * inf: a NaN code); with FLT_MIN its values quantise to (near) zero instead.
  float scale = amax > 0.0f ? fmaxf(amax / kE4M3MaxDevice, FLT_MIN) : 1.0f;
  if (p.pow2_scales) {  // up to the next power of two by the bits (exact; scale is positive and normal here)
    const uint32_t b = __float_as_uint(scale);
    scale = __uint_as_float((b & 0x7fffffu) ? (b & 0x7f800000u) + 0x800000u : b);
  }
  const float inv = 1.0f / scale;
  uint32_t packed = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const __nv_fp8_storage_t q = __nv_cvt_float_to_fp8(v[j] * inv, __NV_SATFINITE, __NV_E4M3);
    packed |= uint32_t(q) << (8 * j);
  }
  // The row's segment: the last s with seg_offs[s] <= i (binary search; one segment when seg_offs is null).
  int64_t o = 0, m = p.M, sbase = 0, po = 0;
  if (p.seg_offs) {
    int lo = 0, hi = p.nseg - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (p.seg_offs[mid] <= i) lo = mid; else hi = mid - 1;
    }
    o = p.seg_offs[lo];
    m = p.seg_offs[lo + 1] - o;
    sbase = p.seg_sbase[lo];
    po = p.seg_poffs ? p.seg_poffs[lo] : o;
  }
  const int64_t r = po + (i - o), m4 = (m + 3) / 4 * 4;
  uint8_t* dst = p.q + r * p.ldq + int64_t(kb) * 128 + lane * 4;
  if (k0 + 4 <= p.K && p.ldq % 4 == 0) {
    *reinterpret_cast<uint32_t*>(dst) = packed;
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (k0 + j < p.K) dst[j] = uint8_t(packed >> (8 * j));
  }
  if (lane == 0) p.scales[sbase + int64_t(kb) * m4 + (i - o)] = scale;
}

// Warp w of block b quantises tiles (b * kQuantWarps + w) * kQuantTiles + t, t < kQuantTiles: one tile is a
// lane's 8 or 16 bytes, so a warp loads all of its tiles before it reduces the first (a tile a warp left the
// copy rate to the loads' latency).
__global__ void __launch_bounds__(kQuantWarps * 32)
    quantize_fp8_kernel(Fp8QuantParams p, int64_t tiles_total, int32_t kb_count) {
  pdl_trigger();
  pdl_wait();
  const int lane = threadIdx.x % 32;
  const int64_t first = (blockIdx.x * int64_t(kQuantWarps) + threadIdx.x / 32) * kQuantTiles;
  // Tile t is (row t / kb_count, K block t % kb_count), split once in 32 bits (the launcher keeps the tile
  // count below 2^31): a 64-bit division is a long subroutine, and the split ran twice a tile.
  int64_t row[kQuantTiles];
  int32_t kb[kQuantTiles];
  float v[kQuantTiles][4];
#pragma unroll
  for (int t = 0; t < kQuantTiles; ++t) {
    const uint32_t tile = uint32_t(first + t), r = tile / uint32_t(kb_count);
    row[t] = int64_t(r), kb[t] = int32_t(tile - r * uint32_t(kb_count));
    if (first + t < tiles_total) quant_load(p, row[t], kb[t], lane, v[t]);
  }
#pragma unroll
  for (int t = 0; t < kQuantTiles; ++t)
    if (first + t < tiles_total) quant_store(p, row[t], kb[t], lane, v[t]);
}

// out[r, c] = in[r, c] for c < cols, 0 for cols <= c < ld.
__global__ void pad_scales_kernel(const float* in, int32_t rows, int32_t cols, int32_t ld, float* out) {
  pdl_trigger();
  pdl_wait();
  for (int32_t j = blockIdx.x * blockDim.x + threadIdx.x; j < rows * ld; j += gridDim.x * blockDim.x) {
    const int32_t r = j / ld, c = j % ld;
    out[j] = c < cols ? in[int64_t(r) * cols + c] : 0.0f;
  }
}

__global__ void bf16_rows_to_f32_kernel(const uint16_t* in, int64_t T, int64_t N, float* out, int64_t ldo) {
  pdl_trigger();
  pdl_wait();
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < T * N; j += int64_t(gridDim.x) * blockDim.x)
    out[(j / N) * ldo + j % N] = bf16_bits_to_float(in[j]);
}

}  // namespace

void bf16_rows_to_f32(const uint16_t* in, int64_t T, int64_t N, float* out, int64_t ldo, cudaStream_t s) {
  if (T * N == 0) return;
  launch("bf16_rows_to_f32", bf16_rows_to_f32_kernel, dim3(std::min<unsigned>(blocks_for(T * N, 256), 4096u)), 256, 0,
         s, in, T, N, out, ldo);
}

void quantize_fp8(const Fp8QuantParams& p, cudaStream_t s) {
  if (p.M == 0 || p.K == 0) return;
  const int32_t kb = int32_t((p.K + 127) / 128);
  const int64_t tiles = p.M * kb;
  // The kernel splits tile indices in 32 bits (one tile is 128 values of a row: 2^31 of them is 2^38 values).
  if (tiles >= (int64_t(1) << 31)) check(cudaErrorInvalidValue, "quantize_fp8: more than 2^31 tiles");
  launch("quantize_fp8", quantize_fp8_kernel, dim3(blocks_for(tiles, kQuantWarps * kQuantTiles)),
         kQuantWarps * 32, 0, s, p, tiles, kb);
}

void pad_scales(const float* in, int32_t rows, int32_t cols, int32_t ld, float* out, cudaStream_t s) {
  const int32_t n = rows * ld;
  launch("pad_scales", pad_scales_kernel, dim3(std::min<unsigned>(blocks_for(n, 256), 64u), 1), 256, 0, s, in, rows,
         cols, ld, out);
}

}  // namespace moe::cuda
