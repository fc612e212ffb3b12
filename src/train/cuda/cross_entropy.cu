// Softmax cross-entropy over the vocabulary fused with its gradient, one block per row: the twin of
// train/ops/cross_entropy.cpp. One pass reads the row for its max and sum of exponentials together (online
// softmax: each thread keeps its running max m and sum s = sum exp(l - m), rescaling s when m grows; the threads'
// pairs are then combined at the row's max), a second writes the gradient over it: 2 reads and 1 write of the
// [n, V] logits (a DeepSeek-vocabulary row is 517 KB, so the rows in flight do not stay in L2), not 3 and 1.
// The target's logit is read before any thread overwrites the row.
#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {
__global__ void cross_entropy_kernel(float* logits, float* loss, const int32_t* targets, int64_t vocab,
                                     float dscale) {
  __shared__ float red[32];
  float* l = logits + int64_t(blockIdx.x) * vocab;
  const int32_t target = targets[blockIdx.x];
  float m = -INFINITY, z = 0;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    const float x = l[v];
    if (x > m) {
      z = z * expf(m - x) + 1.0f;  // expf(-inf) = 0 for the first value
      m = x;
    } else {
      z += expf(x - m);
    }
  }
  const float mx = block_reduce<true>(m, red);
  z = block_reduce<false>(m == -INFINITY ? 0.0f : z * expf(m - mx), red);
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
