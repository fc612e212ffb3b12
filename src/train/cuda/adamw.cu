// AdamW on the device, elementwise (the twin of adamw_step's inner loop in train/optimizer.cpp; the global norm
// and the clip factor come from the caller). The CPU computes in double; here FP32, so parameters agree to FP32
// rounding (~1e-7 relative per step).
#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {
__global__ void adamw_kernel(float* w, const float* g, float* m, float* v, int64_t count, AdamWArgs a) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const float gi = g[i] * a.clip;
  const float mi = a.beta1 * m[i] + (1.0f - a.beta1) * gi;
  const float vi = a.beta2 * v[i] + (1.0f - a.beta2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  w[i] = w[i] * a.decay - a.lr * ((mi / a.bc1) / (sqrtf(vi / a.bc2) + a.eps));
}
}  // namespace

void adamw_update(float* w, const float* g, float* m, float* v, int64_t count, const AdamWArgs& a, cudaStream_t s) {
  if (count == 0) return;
  adamw_kernel<<<blocks_for(count, 256), 256, 0, s>>>(w, g, m, v, count, a);
}

}  // namespace moe::train::cuda
