// F32 -> BF16 (round to nearest even) for the GEMMs' operands.
#include <cuda_bf16.h>

#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {
__global__ void to_bf16_kernel(uint16_t* out, const float* in, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(in[i]));
}
// 4 values a thread (a 16-byte load, an 8-byte store): in 16-byte and out 8-byte aligned, `quads` groups.
__global__ void to_bf16x4_kernel(uint16_t* out, const float* in, int64_t quads) {
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < quads; q += int64_t(gridDim.x) * blockDim.x) {
    const float4 x = reinterpret_cast<const float4*>(in)[q];
    const ushort4 y{__bfloat16_as_ushort(__float2bfloat16_rn(x.x)), __bfloat16_as_ushort(__float2bfloat16_rn(x.y)),
                    __bfloat16_as_ushort(__float2bfloat16_rn(x.z)), __bfloat16_as_ushort(__float2bfloat16_rn(x.w))};
    reinterpret_cast<ushort4*>(out)[q] = y;
  }
}
unsigned grid(int64_t count) { return blocks_for(count, 256) < 65535u ? blocks_for(count, 256) : 65535u; }
__global__ void fill_kernel(uint16_t* out, int64_t count, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 0x9E3779B1u ^ seed;  // a multiply-xorshift hash of the index
    h ^= h >> 16, h *= 0x85EBCA6Bu, h ^= h >> 13, h *= 0xC2B2AE35u, h ^= h >> 16;
    out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(float(h) * (2.0f / 4294967296.0f) - 1.0f));
  }
}
}  // namespace

void fill_bf16_uniform(uint16_t* out, int64_t count, uint32_t seed, cudaStream_t s) {
  if (count <= 0) return;
  fill_kernel<<<1024, 256, 0, s>>>(out, count, seed);
}

void to_bf16(uint16_t* out, const float* in, int64_t count, cudaStream_t s) {
  if (count <= 0) return;
  // The operands are buffers and arena slices (rarely unaligned): the vector kernel over the aligned groups of 4,
  // the scalar one over what is left at the end (and over everything when the pointers are not aligned).
  const int64_t quads =
      (reinterpret_cast<uintptr_t>(in) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0) ? count / 4 : 0;
  if (quads > 0) to_bf16x4_kernel<<<grid(quads), 256, 0, s>>>(out, in, quads);
  if (count > 4 * quads) to_bf16_kernel<<<grid(count - 4 * quads), 256, 0, s>>>(out + 4 * quads, in + 4 * quads,
                                                                                 count - 4 * quads);
}

}  // namespace moe::train::cuda
