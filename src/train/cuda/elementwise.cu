// Elementwise and reduction helpers of the device-resident step: strided adds (residuals, the head's rows into
// the final norm's gradient), scaling (gradient accumulation), and sums in double (losses, the global gradient
// norm) in a fixed order, so a run is bit-reproducible (no atomics).
#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {
__global__ void add_strided_kernel(float* dst, int64_t dst_pitch, const float* src, int64_t src_pitch, int64_t width,
                                   int64_t height) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= width * height) return;
  const int64_t y = i / width, x = i % width;
  dst[y * dst_pitch + x] += src[y * src_pitch + x];
}

__global__ void scale_kernel(float* x, float s, int64_t count) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < count) x[i] *= s;
}

constexpr int kSumThreads = 256, kSumBlocks = 512;

// Stage 1: block b sums elements b*T + tid, strided by blocks*T, in double; the block's threads are then added
// as a tree in a fixed order.
__global__ void partial_sum_kernel(double* partial, const float* x, int64_t count, bool squares) {
  __shared__ double red[kSumThreads];
  double acc = 0;
  for (int64_t i = blockIdx.x * int64_t(kSumThreads) + threadIdx.x; i < count; i += int64_t(gridDim.x) * kSumThreads) {
    const double v = double(x[i]);
    acc += squares ? v * v : v;
  }
  red[threadIdx.x] = acc;
  __syncthreads();
  for (int o = kSumThreads / 2; o > 0; o >>= 1) {
    if (int(threadIdx.x) < o) red[threadIdx.x] += red[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = red[0];
}

__global__ void final_sum_kernel(double* out, const double* partial, int blocks) {
  if (threadIdx.x != 0) return;
  double acc = 0;
  for (int b = 0; b < blocks; ++b) acc += partial[b];
  *out = acc;
}
}  // namespace

void add_strided(float* dst, int64_t dst_pitch, const float* src, int64_t src_pitch, int64_t width, int64_t height,
                 cudaStream_t s) {
  const int64_t count = width * height;
  if (count == 0) return;
  add_strided_kernel<<<blocks_for(count, 256), 256, 0, s>>>(dst, dst_pitch, src, src_pitch, width, height);
}

void scale(float* x, float factor, int64_t count, cudaStream_t s) {
  if (count == 0) return;
  scale_kernel<<<blocks_for(count, 256), 256, 0, s>>>(x, factor, count);
}

int64_t sum_scratch_doubles() { return kSumBlocks; }

void sum_double(double* out, double* scratch, const float* x, int64_t count, bool squares, cudaStream_t s) {
  partial_sum_kernel<<<kSumBlocks, kSumThreads, 0, s>>>(scratch, x, count, squares);
  final_sum_kernel<<<1, 32, 0, s>>>(out, scratch, kSumBlocks);
}

}  // namespace moe::train::cuda
