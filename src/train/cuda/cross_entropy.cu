// Softmax cross-entropy over the vocabulary fused with its gradient, one block per row: the twin of
// train/ops/cross_entropy.cpp. One pass reads the row for its max and sum of exponentials together (online
// softmax: each thread keeps its running max m and sum s = sum exp(l - m), rescaling s when m grows; the threads'
// pairs are then combined at the row's max), a second writes the gradient over it: 2 reads and 1 write of the
// [n, V] logits (a DeepSeek-vocabulary row is 517 KB, so the rows in flight do not stay in L2), not 3 and 1.
// The target's logit is read before any thread overwrites the row. The order in which a thread folds its values
// differs between the float4 and the scalar kernel (the sum's rounding, ~1e-7 relative), not the formula.
// With grad_bf16 the gradient goes there instead, rounded to BF16 (nearest even, the bits to_bf16 would make of
// the FP32 gradient) for a BF16 head's backward products: half the write, and no conversion pass over [n, V].
#include <cuda_bf16.h>

#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {
// Folds value x into the running (m, z): z = sum exp(l - m) over the values seen.
__device__ __forceinline__ void fold(float& m, float& z, float x) {
  if (x > m) {
    z = z * expf(m - x) + 1.0f;  // expf(-inf) = 0 for the first value
    m = x;
  } else {
    z += expf(x - m);
  }
}

// kVec: the row is read and written as float4 (vocab % 4 == 0, so every row starts on 16 bytes), two in flight
// per thread in the first pass: a row is 40 K float4 at DeepSeek's vocabulary, and the scalar loop ran at
// 2.3 TB/s on an H200 (few loads in flight behind the data-dependent branch).
__device__ __forceinline__ uint16_t bf16_rn(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }

template <bool kVec>
__global__ void cross_entropy_kernel(float* logits, float* loss, const int32_t* targets, int64_t vocab,
                                     float dscale, uint16_t* grad_bf16) {
  __shared__ float red[32];
  float* l = logits + int64_t(blockIdx.x) * vocab;
  const int32_t target = targets[blockIdx.x];
  float m = -INFINITY, z = 0;
  if constexpr (kVec) {
    const float4* l4 = reinterpret_cast<const float4*>(l);
    const int64_t n4 = vocab / 4, step = blockDim.x;
    int64_t v = threadIdx.x;
    for (; v + step < n4; v += 2 * step) {
      const float4 a = l4[v], b = l4[v + step];
      fold(m, z, a.x), fold(m, z, a.y), fold(m, z, a.z), fold(m, z, a.w);
      fold(m, z, b.x), fold(m, z, b.y), fold(m, z, b.z), fold(m, z, b.w);
    }
    if (v < n4) {
      const float4 a = l4[v];
      fold(m, z, a.x), fold(m, z, a.y), fold(m, z, a.z), fold(m, z, a.w);
    }
  } else {
    for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) fold(m, z, l[v]);
  }
  const float mx = block_reduce<true>(m, red);
  z = block_reduce<false>(m == -INFINITY ? 0.0f : z * expf(m - mx), red);
  const float lt = target >= 0 ? l[target] : 0.0f;
  __syncthreads();  // every thread has read l[target] before the row is overwritten
  if (threadIdx.x == 0) loss[blockIdx.x] = target >= 0 ? logf(z) + mx - lt : 0.0f;
  auto grad = [&](float x, int64_t v) {
    return target < 0 ? 0.0f : dscale * (expf(x - mx) / z - (v == target ? 1.0f : 0.0f));
  };
  uint16_t* gb = grad_bf16 ? grad_bf16 + int64_t(blockIdx.x) * vocab : nullptr;
  if constexpr (kVec) {
    float4* l4 = reinterpret_cast<float4*>(l);
    for (int64_t v = threadIdx.x; v < vocab / 4; v += blockDim.x) {
      const float4 a = l4[v];
      const float4 d = make_float4(grad(a.x, 4 * v), grad(a.y, 4 * v + 1), grad(a.z, 4 * v + 2), grad(a.w, 4 * v + 3));
      if (gb)
        reinterpret_cast<ushort4*>(gb)[v] = ushort4{bf16_rn(d.x), bf16_rn(d.y), bf16_rn(d.z), bf16_rn(d.w)};
      else
        l4[v] = d;
    }
  } else {
    for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
      const float d = grad(l[v], v);
      if (gb)
        gb[v] = bf16_rn(d);
      else
        l[v] = d;
    }
  }
}
}  // namespace

void cross_entropy(float* logits, float* loss, const int32_t* targets, int64_t n, int64_t vocab, float dscale,
                   cudaStream_t s, uint16_t* grad_bf16) {
  if (n == 0) return;
  if (vocab % 4 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(grad_bf16) % 8 == 0)
    cross_entropy_kernel<true><<<unsigned(n), 256, 0, s>>>(logits, loss, targets, vocab, dscale, grad_bf16);
  else
    cross_entropy_kernel<false><<<unsigned(n), 256, 0, s>>>(logits, loss, targets, vocab, dscale, grad_bf16);
}

}  // namespace moe::train::cuda
