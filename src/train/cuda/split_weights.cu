// Split master weights to and from FP32 (split_weights.cuh gives the encoding): for bind's uploads and pull's
// downloads of the routed experts, whose masters live split in the W arena.
#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"
#include "train/cuda/split_weights.cuh"

namespace moe::train::cuda {

namespace {
__global__ void split_kernel(uint16_t* hi, int16_t* lo, const float* w, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    split_value(w[i], hi[i], lo[i]);
}
__global__ void join_kernel(float* w, const uint16_t* hi, const int16_t* lo, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    w[i] = join_value(hi[i], lo[i]);
}
unsigned grid(int64_t count) { return blocks_for(count, 256) < 65535u ? blocks_for(count, 256) : 65535u; }
}  // namespace

void split_weights(uint16_t* hi, int16_t* lo, const float* w, int64_t count, cudaStream_t s) {
  if (count <= 0) return;
  split_kernel<<<grid(count), 256, 0, s>>>(hi, lo, w, count);
}

void join_weights(float* w, const uint16_t* hi, const int16_t* lo, int64_t count, cudaStream_t s) {
  if (count <= 0) return;
  join_kernel<<<grid(count), 256, 0, s>>>(w, hi, lo, count);
}

}  // namespace moe::train::cuda
