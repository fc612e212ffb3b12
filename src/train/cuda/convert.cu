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
  const unsigned blocks = blocks_for(count, 256) < 65535u ? blocks_for(count, 256) : 65535u;
  to_bf16_kernel<<<blocks, 256, 0, s>>>(out, in, count);
}

}  // namespace moe::train::cuda
