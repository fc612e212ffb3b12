// SwiGLU forward and backward, elementwise (the twin of train/ops/swiglu.cpp):
// out = silu(g) u; dg += dout u s (1 + g (1 - s)), du += dout g s, with s = sigmoid(g) (or = without accumulate:
// no zeroed buffers first, 2 x 138 MB of memset a layer's experts at train-mid's 2 x 2048 tokens).
#include <cuda_bf16.h>

#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {
// The values, shared by the FP32 and BF16 kernels so that both round the same FP32 numbers.
__device__ __forceinline__ float act(float g, float u) { return g / (1.0f + expf(-g)) * u; }
__device__ __forceinline__ void grads(float d, float g, float u, float& dg, float& du) {
  const float sg = 1.0f / (1.0f + expf(-g));
  dg = d * u * sg * (1.0f + g * (1.0f - sg)), du = d * g * sg;
}
__device__ __forceinline__ uint16_t bf16(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }

__global__ void forward_kernel(float* out, const float* gate, const float* up, int64_t count) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  out[i] = act(gate[i], up[i]);
}

__global__ void backward_kernel(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                                int64_t count, bool accumulate) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  float dg, du;
  grads(dout[i], gate[i], up[i], dg, du);
  if (dgate) dgate[i] = accumulate ? dgate[i] + dg : dg;
  if (dup) dup[i] = accumulate ? dup[i] + du : du;
}

__global__ void forward_bf16_kernel(uint16_t* out, const float* gate, const float* up, int64_t count) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  out[i] = bf16(act(gate[i], up[i]));
}

__global__ void backward_bf16_kernel(uint16_t* dgate, uint16_t* dup, const float* dout, const float* gate,
                                     const float* up, int64_t count) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  float dg, du;
  grads(dout[i], gate[i], up[i], dg, du);
  dgate[i] = bf16(dg), dup[i] = bf16(du);
}
}  // namespace

void swiglu_forward(float* out, const float* gate, const float* up, int64_t count, cudaStream_t s) {
  if (count == 0) return;
  forward_kernel<<<blocks_for(count, 256), 256, 0, s>>>(out, gate, up, count);
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t count,
                     cudaStream_t s, bool accumulate) {
  if (count == 0) return;
  backward_kernel<<<blocks_for(count, 256), 256, 0, s>>>(dgate, dup, dout, gate, up, count, accumulate);
}


void swiglu_forward_bf16(uint16_t* out, const float* gate, const float* up, int64_t count, cudaStream_t s) {
  if (count == 0) return;
  forward_bf16_kernel<<<blocks_for(count, 256), 256, 0, s>>>(out, gate, up, count);
}

void swiglu_backward_bf16(uint16_t* dgate, uint16_t* dup, const float* dout, const float* gate, const float* up,
                          int64_t count, cudaStream_t s) {
  if (count == 0) return;
  backward_bf16_kernel<<<blocks_for(count, 256), 256, 0, s>>>(dgate, dup, dout, gate, up, count);
}

}  // namespace moe::train::cuda
