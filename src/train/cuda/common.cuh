#pragma once
// Block reductions for the trainer's kernels: any block size that is a multiple of 32 (<= 1024). Each call
// ends with a barrier, so one kernel may call them several times with the same shared scratch.
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/cuda_common.cuh"

namespace moe::train::cuda {

using moe::cuda::warp_max;  // the inference kernels' warp reductions (backend/cuda/cuda_common.cuh)
using moe::cuda::warp_sum;

// red: __shared__ float[32]. Every thread gets the block's sum (or max): warp results in warp order.
template <bool kMax>
__device__ __forceinline__ float block_reduce(float v, float* red) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  const float identity = kMax ? -INFINITY : 0.0f;
  v = kMax ? warp_max(v) : warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < warps ? red[lane] : identity;
    w = kMax ? warp_max(w) : warp_sum(w);
    if (lane == 0) red[0] = w;
  }
  __syncthreads();
  const float r = red[0];
  __syncthreads();
  return r;
}

inline unsigned blocks_for(int64_t count, int threads) { return unsigned((count + threads - 1) / threads); }

}  // namespace moe::train::cuda
