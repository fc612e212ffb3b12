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

// 1024 blocks of 256 threads, each with two 16-byte loads in flight: ~8 MB of reads outstanding, what an H200's
// HBM needs to stream (512 blocks of one 4-byte load each ran the global gradient norm at 1.7 TB/s).
constexpr int kSumThreads = 256, kSumBlocks = 1024;

__device__ __forceinline__ double sum4(float4 v, bool squares) {
  const double a = v.x, b = v.y, c = v.z, d = v.w;
  return squares ? (a * a + b * b) + (c * c + d * d) : (a + b) + (c + d);
}

// Stage 1: x is read as float4 from its first 16-byte boundary (`head` < 4 values before it and the < 4 after the
// last whole float4 go to block 0); block b sums float4s b*T + tid, strided by blocks*T, in double, two at a time;
// the block's threads are then added as a tree in a fixed order (the same grid every call: reproducible bits).
__global__ void partial_sum_kernel(double* partial, const float* x, int64_t count, bool squares) {
  __shared__ double red[kSumThreads];
  const int64_t head = min(count, int64_t((16 - (reinterpret_cast<uintptr_t>(x) & 15)) & 15) / 4);
  const float4* v = reinterpret_cast<const float4*>(x + head);
  const int64_t nv = (count - head) / 4, stride = int64_t(gridDim.x) * kSumThreads;
  double acc0 = 0, acc1 = 0;
  int64_t i = blockIdx.x * int64_t(kSumThreads) + threadIdx.x;
  for (; i + stride < nv; i += 2 * stride) {
    const float4 a = v[i], b = v[i + stride];
    acc0 += sum4(a, squares);
    acc1 += sum4(b, squares);
  }
  if (i < nv) acc0 += sum4(v[i], squares);
  if (blockIdx.x == 0 && threadIdx.x < 8) {  // threads 0-3: the head's values, 4-7: the tail's
    const int64_t j = threadIdx.x < 4 ? int64_t(threadIdx.x) : head + 4 * nv + int64_t(threadIdx.x) - 4;
    if ((threadIdx.x < 4 ? j < head : j < count)) {
      const double e = double(x[j]);
      acc1 += squares ? e * e : e;
    }
  }
  red[threadIdx.x] = acc0 + acc1;
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
