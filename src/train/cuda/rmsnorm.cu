// RMSNorm forward and backward (the twin of train/ops/rmsnorm.cpp), FP32. One block per row for y and dx; the
// weight gradient dw_j = sum over rows dy_ij x_ij rstd_i: blocks of 32 columns x 32 row groups, each thread walking
// its group's rows in order, the 32 groups' sums then added in group order (deterministic, no atomics; a block per
// 32 columns keeps thousands of threads busy where one thread per column left the GPU idle at 32k rows).
#include <cuda_bf16.h>

#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {
constexpr int kThreads = 256;

// y and/or yb: the FP32 value and its BF16 rounding (nearest even: the bits to_bf16 makes of y).
__global__ void forward_kernel(float* y, uint16_t* yb, float* rstd, const float* x, const float* w, int64_t d,
                               float eps) {
  __shared__ float red[32];
  const float* xi = x + int64_t(blockIdx.x) * d;
  float ss = 0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) ss += xi[j] * xi[j];
  ss = block_reduce<false>(ss, red);
  const float r = rsqrtf(ss / float(d) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float v = w[j] * xi[j] * r;
    if (y) y[int64_t(blockIdx.x) * d + j] = v;
    if (yb) yb[int64_t(blockIdx.x) * d + j] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
}

// dx_j += r dy_j w_j - r^3 x_j (sum_k dy_k w_k x_k) / d
__global__ void backward_dx_kernel(float* dx, const float* dy, const float* x, const float* w, const float* rstd,
                                   int64_t d) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  const float* xi = x + row * d;
  const float* dyi = dy + row * d;
  const float r = rstd[row];
  float gx = 0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) gx += dyi[j] * w[j] * xi[j];
  gx = block_reduce<false>(gx, red);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
    dx[row * d + j] += r * dyi[j] * w[j] - r * r * r * xi[j] * gx / float(d);
}

constexpr int kDwCols = 32, kDwGroups = 32;

__global__ void backward_dw_kernel(float* dw, const float* dy, const float* x, const float* rstd, int64_t n,
                                   int64_t d) {
  __shared__ float part[kDwGroups][kDwCols];
  const int64_t j = blockIdx.x * int64_t(kDwCols) + threadIdx.x;
  const int64_t per = (n + kDwGroups - 1) / kDwGroups, i0 = threadIdx.y * per, i1 = min(n, i0 + per);
  float acc = 0;
  if (j < d)
    for (int64_t i = i0; i < i1; ++i) acc += dy[i * d + j] * x[i * d + j] * rstd[i];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < d) {
    float total = 0;
    for (int g = 0; g < kDwGroups; ++g) total += part[g][threadIdx.x];
    dw[j] += total;
  }
}
}  // namespace

void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t n, int64_t d, float eps,
                     cudaStream_t s, uint16_t* y_bf16) {
  if (n == 0) return;
  forward_kernel<<<unsigned(n), kThreads, 0, s>>>(y, y_bf16, rstd, x, w, d, eps);
}

void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int64_t n, int64_t d, cudaStream_t s) {
  if (n == 0) return;
  if (dx) backward_dx_kernel<<<unsigned(n), kThreads, 0, s>>>(dx, dy, x, w, rstd, d);
  if (dw) backward_dw_kernel<<<blocks_for(d, kDwCols), dim3(kDwCols, kDwGroups), 0, s>>>(dw, dy, x, rstd, n, d);
}

}  // namespace moe::train::cuda
