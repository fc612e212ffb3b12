// Rotary embedding on interleaved pairs, in place (the twin of train/ops/rope.cpp): one thread per (token, pair,
// head). The angle is computed in double (positions up to 1e5 times frequencies near 1 lose FP32 precision) and
// cos/sin rounded once; the backward is the rotation by the opposite angle.
#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {
__global__ void rotate_kernel(float* x, int64_t n, int64_t heads, int64_t head_dim, int64_t offset,
                              const int32_t* pos, const double* inv_freq, int64_t half, float attn_factor,
                              float sign) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= n * half * heads) return;
  const int64_t h = idx % heads, p = (idx / heads) % half, i = idx / (heads * half);
  const double angle = double(pos[i]) * inv_freq[p];
  const float c = float(cos(angle)) * attn_factor, s = sign * float(sin(angle)) * attn_factor;
  float* v = x + (i * heads + h) * head_dim + offset + 2 * p;
  const float a = v[0], b = v[1];
  v[0] = a * c - b * s;
  v[1] = a * s + b * c;
}
}  // namespace

void rope_rotate(float* x, int64_t n, int64_t heads, int64_t head_dim, int64_t offset, const int32_t* pos,
                 const double* inv_freq, int64_t half, float attn_factor, float sign, cudaStream_t s) {
  const int64_t count = n * half * heads;
  if (count == 0) return;
  rotate_kernel<<<blocks_for(count, 256), 256, 0, s>>>(x, n, heads, head_dim, offset, pos, inv_freq, half,
                                                       attn_factor, sign);
}

}  // namespace moe::train::cuda
