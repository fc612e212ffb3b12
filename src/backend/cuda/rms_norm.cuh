#pragma once
// One row of RMSNorm's fast path (rms_norm.cu's kernels; a header so that a kernel ending in the residual
// step can compute the same bits). Every thread loads its V float4s of the
// row and their weights in one round, before the reduction: a row costs one memory round trip (at batch 1 a
// 2048-wide row took ~9 us with a loop of dependent loads and a second pass).
//   RESID: x = h + y, stored back to h; out = w * x / sqrt(mean(x^2) + eps).
// h and y are read past L1 (.cg): in a fused kernel other blocks of the same launch wrote y.
#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

constexpr int kNormThreads = 256;

template <int V, bool RESID>
__device__ __forceinline__ void rms_norm_row(const float* x, float* h, const float* y, const WeightRef& w,
                                             float eps, int64_t D, int64_t row, float* out) {
  const int64_t D4 = D / 4;
  const float4* xr = reinterpret_cast<const float4*>((RESID ? h : x) + row * D);
  float4 v[V];
  float wv[V][4];
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int64_t c = threadIdx.x + int64_t(i) * kNormThreads;
    if (c < D4) {
      v[i] = __ldcg(xr + c);
      if constexpr (RESID) {
        const float4 b = __ldcg(reinterpret_cast<const float4*>(y + row * D) + c);
        v[i].x += b.x;
        v[i].y += b.y;
        v[i].z += b.z;
        v[i].w += b.w;
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) wv[i][j] = load_element(w.data, w.dtype, 4 * c + j);
    }
  }
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int64_t c = threadIdx.x + int64_t(i) * kNormThreads;
    if (c < D4) {
      if constexpr (RESID) reinterpret_cast<float4*>(h + row * D)[c] = v[i];
      ss += v[i].x * v[i].x + v[i].y * v[i].y + v[i].z * v[i].z + v[i].w * v[i].w;
    }
  }
  const float total = block_sum(ss);
  const float inv = rsqrtf(total / float(D) + eps);
  float4* orow = reinterpret_cast<float4*>(out + row * D);
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int64_t c = threadIdx.x + int64_t(i) * kNormThreads;
    if (c < D4)
      orow[c] = make_float4(wv[i][0] * (v[i].x * inv), wv[i][1] * (v[i].y * inv), wv[i][2] * (v[i].z * inv),
                            wv[i][3] * (v[i].w * inv));
  }
}

// float4s per thread for rms_norm_row (1, 2, 4 or 8), or 0 where the row does not fit it (width not a
// multiple of 4 or above 8192, or a pointer not 16-byte aligned).
inline int rms_norm_vec_width(int64_t D, const void* a, const void* b, const void* c) {
  const auto aligned16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (D % 4 != 0 || D > int64_t(8) * 4 * kNormThreads || !aligned16(a) || !aligned16(b) || !aligned16(c))
    return 0;
  const int64_t per = (D / 4 + kNormThreads - 1) / kNormThreads;
  return per <= 1 ? 1 : per <= 2 ? 2 : per <= 4 ? 4 : 8;
}

}  // namespace moe::cuda
