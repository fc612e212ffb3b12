// E4M3 matrices under 128x128 block scales, transposed (kernels.h's Fp8TransposeArgs): a block's codes are
// the same values in either layout (one scale for the whole block), so the layout the input-gradient products
// read is the forward layout's bytes moved, with the scale grid transposed. One CTA per 128x128 block and
// matrix of the batch: the block passes through shared memory as bytes, read and written as 4-byte words, 128
// bytes a warp.
#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {

constexpr int kBlock = 128, kBytePitch = kBlock + 4, kThreads = 256;

__global__ void __launch_bounds__(kThreads) fp8_transpose_kernel(Fp8TransposeArgs a) {
  __shared__ uint32_t tile[kBlock * kBytePitch / 4];  // [128][132] bytes
  auto* bytes = reinterpret_cast<uint8_t*>(tile);
  const int64_t e = blockIdx.z, r0 = int64_t(blockIdx.y) * kBlock, c0 = int64_t(blockIdx.x) * kBlock;
  const uint8_t* in = a.in + e * a.in_stride;
  uint8_t* out = a.out + e * a.out_stride;
  const int lane = threadIdx.x % 32, row = threadIdx.x / 32;
  // In: rows row, row + 8, ..., 4-byte word `lane` of each (columns 4 lane .. 4 lane + 3).
#pragma unroll
  for (int i = 0; i < kBlock / 8; ++i) {
    const int rr = row + 8 * i;
    tile[(rr * kBytePitch) / 4 + lane] =
        *reinterpret_cast<const uint32_t*>(in + (r0 + rr) * a.cols + c0 + 4 * lane);
  }
  __syncthreads();
  // Out row oc (input column c0 + oc), word `lane`: input rows 4 lane .. 4 lane + 3 of that column, in byte
  // order.
#pragma unroll
  for (int i = 0; i < kBlock / 8; ++i) {
    const int oc = row + 8 * i;
    const int r = 4 * lane;
    const uint32_t w =
        uint32_t(bytes[r * kBytePitch + oc]) | uint32_t(bytes[(r + 1) * kBytePitch + oc]) << 8 |
        uint32_t(bytes[(r + 2) * kBytePitch + oc]) << 16 | uint32_t(bytes[(r + 3) * kBytePitch + oc]) << 24;
    *reinterpret_cast<uint32_t*>(out + (c0 + oc) * a.out_ld + r0 + r) = w;
  }
  if (threadIdx.x == 0)
    a.out_scales[e * a.out_sstride + int64_t(blockIdx.x) * a.out_sld + blockIdx.y] =
        a.in_scales[e * a.in_sstride + int64_t(blockIdx.y) * a.in_sld + blockIdx.x];
}

}  // namespace

bool fp8_transpose_args_ok(const Fp8TransposeArgs& a) {
  return a.in && a.out && a.in_scales && a.out_scales && a.rows > 0 && a.cols > 0 && a.rows % kBlock == 0 &&
         a.cols % kBlock == 0 && a.out_ld >= a.rows && a.out_ld % 4 == 0 && a.batch > 0 &&
         a.in_sld >= a.cols / kBlock && a.out_sld >= a.rows / kBlock &&
         reinterpret_cast<uintptr_t>(a.in) % 4 == 0 && reinterpret_cast<uintptr_t>(a.out) % 4 == 0 &&
         a.in_stride % 4 == 0 && a.out_stride % 4 == 0;
}

void fp8_transpose(const Fp8TransposeArgs& a, cudaStream_t s) {
  const dim3 grid(unsigned(a.cols / kBlock), unsigned(a.rows / kBlock), unsigned(a.batch));
  fp8_transpose_kernel<<<grid, kThreads, 0, s>>>(a);
}

}  // namespace moe::train::cuda
