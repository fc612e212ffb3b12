// SwiGLU forward and backward, elementwise (the twin of train/ops/swiglu.cpp):
// out = silu(g) u; dg += dout u s (1 + g (1 - s)), du += dout g s, with s = sigmoid(g) (or = without accumulate:
// no zeroed buffers first, 2 x 138 MB of memset a layer's experts at train-mid's 2 x 2048 tokens).
#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {
__global__ void forward_kernel(float* out, const float* gate, const float* up, int64_t count) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const float g = gate[i];
  out[i] = g / (1.0f + expf(-g)) * up[i];
}

__global__ void backward_kernel(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                                int64_t count, bool accumulate) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const float g = gate[i], sg = 1.0f / (1.0f + expf(-g)), d = dout[i];
  const float dg = d * up[i] * sg * (1.0f + g * (1.0f - sg)), du = d * g * sg;
  if (dgate) dgate[i] = accumulate ? dgate[i] + dg : dg;
  if (dup) dup[i] = accumulate ? dup[i] + du : du;
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

}  // namespace moe::train::cuda
