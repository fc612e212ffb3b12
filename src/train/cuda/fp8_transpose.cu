// E4M3 matrices under 128x128 block scales, transposed (kernels.h's Fp8TransposeArgs): a block's codes are
// the same values in either layout (one scale for the whole block), so the layout the input-gradient products
// read is the forward layout's bytes moved, with the scale grid transposed. One CTA per 128x128 block and
// matrix of the batch; the block passes through shared memory, moved in 16-byte chunks both ways, and each
// thread transposes a 16x4-byte strip in registers (byte permutes).
#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {

constexpr int kBlock = 128, kThreads = 256;

// The staged block: [128 rows][32 words], 16-byte chunk c of row r at chunk c ^ ((r / 16) % 8). The loads
// store a row's 8 chunks from 8 lanes (a permutation: conflict-free); the strip reads (below) fetch, for a
// fixed row offset k, rows 16 s + k (s = 0..7) at words 4 w .. 4 w + 3: the swizzle puts those 32 words in 32
// banks.
__device__ __forceinline__ int word_at(int row, int word) {
  return row * 32 + (word ^ (((row >> 4) & 7) << 2));
}

// Bytes j of words a, b, c, d (rows 0..3 of a 4x4 byte square) as one word: column j of the square, row
// order.
__device__ __forceinline__ void transpose4(uint32_t (&w)[4]) {
  const uint32_t lo01 = __byte_perm(w[0], w[1], 0x5140), lo23 = __byte_perm(w[2], w[3], 0x5140);
  const uint32_t hi01 = __byte_perm(w[0], w[1], 0x7362), hi23 = __byte_perm(w[2], w[3], 0x7362);
  w[0] = __byte_perm(lo01, lo23, 0x5410), w[1] = __byte_perm(lo01, lo23, 0x7632);
  w[2] = __byte_perm(hi01, hi23, 0x5410), w[3] = __byte_perm(hi01, hi23, 0x7632);
}

__global__ void __launch_bounds__(kThreads) fp8_transpose_kernel(Fp8TransposeArgs a) {
  __shared__ uint4 tile4[kBlock * 8];  // 16 KB
  const uint32_t* tile = reinterpret_cast<const uint32_t*>(tile4);
  const int64_t e = blockIdx.z, r0 = int64_t(blockIdx.y) * kBlock, c0 = int64_t(blockIdx.x) * kBlock;
  const uint8_t* in = a.in + e * a.in_stride + r0 * a.cols + c0;
  uint8_t* out = a.out + e * a.out_stride + c0 * a.out_ld + r0;
  const int t = int(threadIdx.x), warp = t / 32, lane = t % 32;
  // In: chunk t % 8 of rows t / 8 + 32 i (a warp reads 4 whole rows of 128 bytes).
  uint4 v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    v[i] = *reinterpret_cast<const uint4*>(in + (t / 8 + 32 * i) * a.cols + 16 * (t % 8));
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = t / 8 + 32 * i;
    tile4[r * 8 + ((t % 8) ^ ((r >> 4) & 7))] = v[i];
  }
  __syncthreads();
  // Strip: input rows 16 s .. 16 s + 15 (s = lane % 8) at word j = 4 warp + lane / 8 (input columns 4 j .. 4
  // j + 3), i.e. output rows 4 j .. 4 j + 3 at bytes 16 s .. 16 s + 15: four 4x4 squares, transposed, four
  // 16-byte stores. A warp writes 4 output rows of 128 bytes each per store.
  const int s = lane % 8, j = 4 * warp + lane / 8;
  uint32_t sq[4][4];  // [square q = rows 16 s + 4 q ..][row in square]
#pragma unroll
  for (int q = 0; q < 4; ++q) {
#pragma unroll
    for (int k = 0; k < 4; ++k) sq[q][k] = tile[word_at(16 * s + 4 * q + k, j)];
    transpose4(sq[q]);  // sq[q][b]: input column 4 j + b, rows 16 s + 4 q .. + 3
  }
#pragma unroll
  for (int b = 0; b < 4; ++b)
    *reinterpret_cast<uint4*>(out + (4 * j + b) * a.out_ld + 16 * s) =
        make_uint4(sq[0][b], sq[1][b], sq[2][b], sq[3][b]);
  if (t == 0)
    a.out_scales[e * a.out_sstride + int64_t(blockIdx.x) * a.out_sld + blockIdx.y] =
        a.in_scales[e * a.in_sstride + int64_t(blockIdx.y) * a.in_sld + blockIdx.x];
}

}  // namespace

bool fp8_transpose_args_ok(const Fp8TransposeArgs& a) {
  return a.in && a.out && a.in_scales && a.out_scales && a.rows > 0 && a.cols > 0 && a.rows % kBlock == 0 &&
         a.cols % kBlock == 0 && a.out_ld >= a.rows && a.out_ld % 16 == 0 && a.batch > 0 &&
         a.in_sld >= a.cols / kBlock && a.out_sld >= a.rows / kBlock &&
         reinterpret_cast<uintptr_t>(a.in) % 16 == 0 && reinterpret_cast<uintptr_t>(a.out) % 16 == 0 &&
         a.in_stride % 16 == 0 && a.out_stride % 16 == 0;
}

void fp8_transpose(const Fp8TransposeArgs& a, cudaStream_t s) {
  const dim3 grid(unsigned(a.cols / kBlock), unsigned(a.rows / kBlock), unsigned(a.batch));
  fp8_transpose_kernel<<<grid, kThreads, 0, s>>>(a);
}

}  // namespace moe::train::cuda
