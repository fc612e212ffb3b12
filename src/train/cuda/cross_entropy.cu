// Softmax cross-entropy over the vocabulary fused with its gradient, one block per row: the twin of
// train/ops/cross_entropy.cpp. The row's max and sum of exponentials are block reductions (FP32); the target's
// logit is read before any thread overwrites the row with its gradient.
#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {
__global__ void cross_entropy_kernel(float* logits, float* loss, const int32_t* targets, int64_t vocab,
                                     float dscale) {
  __shared__ float red[32];
  float* l = logits + int64_t(blockIdx.x) * vocab;
  const int32_t target = targets[blockIdx.x];
  float mx = -INFINITY;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) mx = fmaxf(mx, l[v]);
  mx = block_reduce<true>(mx, red);
  float z = 0;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) z += expf(l[v] - mx);
  z = block_reduce<false>(z, red);
  const float lt = target >= 0 ? l[target] : 0.0f;
  __syncthreads();  // every thread has read l[target] before the row is overwritten
  if (threadIdx.x == 0) loss[blockIdx.x] = target >= 0 ? logf(z) + mx - lt : 0.0f;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x)
    l[v] = target < 0 ? 0.0f : dscale * (expf(l[v] - mx) / z - (v == target ? 1.0f : 0.0f));
}
}  // namespace

void cross_entropy(float* logits, float* loss, const int32_t* targets, int64_t n, int64_t vocab, float dscale,
                   cudaStream_t s) {
  if (n == 0) return;
  cross_entropy_kernel<<<unsigned(n), 256, 0, s>>>(logits, loss, targets, vocab, dscale);
}

}  // namespace moe::train::cuda
