// AdamW on the device, elementwise (the twin of adamw_step's inner loop in train/optimizer.cpp; the global norm
// and the clip factor come from the caller). The CPU computes in double; here FP32, so parameters agree to FP32
// rounding (~1e-7 relative per step). One kernel over the storage of the weights (FP32, or split into BF16 hi +
// int16 lo: split_weights.cuh, the same FP32 value) and of the moments (FP32, or BF16 rounded to nearest even
// when stored, the update using the stored values: optimizer.cpp's bf16_moments rule).
#include <cuda_bf16.h>

#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"
#include "train/cuda/split_weights.cuh"

namespace moe::train::cuda {

namespace {
struct F32Weights {
  float* w;
  __device__ float load(int64_t i) const { return w[i]; }
  __device__ void store(int64_t i, float x) const { w[i] = x; }
};
struct SplitWeights {
  uint16_t* hi;
  int16_t* lo;
  __device__ float load(int64_t i) const { return join_value(hi[i], lo[i]); }
  __device__ void store(int64_t i, float x) const { split_value(x, hi[i], lo[i]); }
};
struct F32Moment {
  float* p;
  __device__ float load(int64_t i) const { return p[i]; }
  __device__ float store(int64_t i, float x) const { return p[i] = x; }  // returns the value kept
};
struct Bf16Moment {
  uint16_t* p;
  __device__ float load(int64_t i) const { return __bfloat162float(__ushort_as_bfloat16(p[i])); }
  __device__ float store(int64_t i, float x) const {
    const __nv_bfloat16 b = __float2bfloat16_rn(x);
    p[i] = __bfloat16_as_ushort(b);
    return __bfloat162float(b);
  }
};

template <class Wt, class Mo>
__global__ void adamw_kernel(Wt w, const float* g, Mo m, Mo v, int64_t count, AdamWArgs a) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const float gi = g[i] * a.clip;
  const float mi = m.store(i, a.beta1 * m.load(i) + (1.0f - a.beta1) * gi);
  const float vi = v.store(i, a.beta2 * v.load(i) + (1.0f - a.beta2) * gi * gi);
  w.store(i, w.load(i) * a.decay - a.lr * ((mi / a.bc1) / (sqrtf(vi / a.bc2) + a.eps)));
}

template <class Wt, class Mo>
void launch(Wt w, const float* g, Mo m, Mo v, int64_t count, const AdamWArgs& a, cudaStream_t s) {
  if (count == 0) return;
  adamw_kernel<<<blocks_for(count, 256), 256, 0, s>>>(w, g, m, v, count, a);
}
}  // namespace

void adamw_update(float* w, const float* g, float* m, float* v, int64_t count, const AdamWArgs& a, cudaStream_t s) {
  launch(F32Weights{w}, g, F32Moment{m}, F32Moment{v}, count, a, s);
}

void adamw_update_bf16(float* w, const float* g, uint16_t* m, uint16_t* v, int64_t count, const AdamWArgs& a,
                       cudaStream_t s) {
  launch(F32Weights{w}, g, Bf16Moment{m}, Bf16Moment{v}, count, a, s);
}

void adamw_update_split(uint16_t* hi, int16_t* lo, const float* g, void* m, void* v, bool bf16_moments,
                        int64_t count, const AdamWArgs& a, cudaStream_t s) {
  if (bf16_moments)
    launch(SplitWeights{hi, lo}, g, Bf16Moment{static_cast<uint16_t*>(m)}, Bf16Moment{static_cast<uint16_t*>(v)},
           count, a, s);
  else
    launch(SplitWeights{hi, lo}, g, F32Moment{static_cast<float*>(m)}, F32Moment{static_cast<float*>(v)}, count, a,
           s);
}

}  // namespace moe::train::cuda
