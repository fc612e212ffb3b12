// AdamW on the device, elementwise (the twin of adamw_step's inner loop in train/optimizer.cpp; the global norm
// and the clip factor come from the caller). The CPU computes in double; here FP32, so parameters agree to FP32
// rounding (~1e-7 relative per step).
#include <cuda_bf16.h>

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
// The same with the moments stored in BF16 (nearest even; the update uses the stored values, optimizer.cpp's
// bf16_moments rule).
__global__ void adamw_bf16_kernel(float* w, const float* g, uint16_t* m, uint16_t* v, int64_t count, AdamWArgs a) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const float gi = g[i] * a.clip;
  const float m0 = __bfloat162float(__ushort_as_bfloat16(m[i])), v0 = __bfloat162float(__ushort_as_bfloat16(v[i]));
  const __nv_bfloat16 mb = __float2bfloat16_rn(a.beta1 * m0 + (1.0f - a.beta1) * gi);
  const __nv_bfloat16 vb = __float2bfloat16_rn(a.beta2 * v0 + (1.0f - a.beta2) * gi * gi);
  m[i] = __bfloat16_as_ushort(mb);
  v[i] = __bfloat16_as_ushort(vb);
  const float mi = __bfloat162float(mb), vi = __bfloat162float(vb);
  w[i] = w[i] * a.decay - a.lr * ((mi / a.bc1) / (sqrtf(vi / a.bc2) + a.eps));
}
}  // namespace

void adamw_update_bf16(float* w, const float* g, uint16_t* m, uint16_t* v, int64_t count, const AdamWArgs& a,
                       cudaStream_t s) {
  if (count == 0) return;
  adamw_bf16_kernel<<<blocks_for(count, 256), 256, 0, s>>>(w, g, m, v, count, a);
}

void adamw_update(float* w, const float* g, float* m, float* v, int64_t count, const AdamWArgs& a, cudaStream_t s) {
  if (count == 0) return;
  adamw_kernel<<<blocks_for(count, 256), 256, 0, s>>>(w, g, m, v, count, a);
}

}  // namespace moe::train::cuda
