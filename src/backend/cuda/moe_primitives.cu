// The MoE primitives' own kernels (moe_primitives.h). moe_plan (moe_plan.cu) sorts the assignments; these
// turn its per-expert counts into offsets, copy the token rows into the sorted order (with the inverse
// permutation the combine reads through), and combine from the sorted rows.
#include <algorithm>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/moe_primitives.h"

namespace moe::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;

__global__ void offsets_kernel(const int32_t* counts, int32_t E, int32_t* offsets) {
  if (threadIdx.x != 0) return;
  int32_t off = 0;
  for (int32_t e = 0; e < E; ++e) {
    offsets[e] = off;
    off += counts[e];
  }
  offsets[E] = off;
}

__global__ void dispatch_rows_kernel(const float* x, const int32_t* perm, int64_t M, int32_t k, int64_t D,
                                     float* rows, int32_t* inv, int32_t* iota) {
  for (int64_t i = blockIdx.y; i < M; i += gridDim.y) {
    const int32_t a = perm[i];
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      inv[a] = int32_t(i);
      iota[i] = int32_t(i);
    }
    const float* src = x + int64_t(a / k) * D;
    float* dst = rows + i * D;
    for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < D; d += int64_t(gridDim.x) * blockDim.x)
      dst[d] = src[d];
  }
}

__global__ void combine_sorted_kernel(const float* y, const int32_t* inv, const float* w, int64_t T, int32_t k,
                                      int64_t D, const float* plus, float* out) {
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y)
    for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < D; d += int64_t(gridDim.x) * blockDim.x) {
      float acc = 0.0f;
      for (int j = 0; j < k; ++j)  // weight 0: an id -1 (no expert), its row of y never computed
        if (w[t * k + j] != 0.0f) acc = fmaf(w[t * k + j], y[int64_t(inv[t * k + j]) * D + d], acc);
      out[t * D + d] = plus ? plus[t * D + d] + acc : acc;
    }
}

dim3 grid_for(int64_t D, int64_t rows) {
  return dim3(unsigned(std::min<int64_t>((D + kThreads - 1) / kThreads, 32)),
              unsigned(std::max<int64_t>(1, std::min(rows, kMaxGridY))));
}

}  // namespace

void moe_offsets(const int32_t* counts, int32_t E, int32_t* offsets, cudaStream_t s) {
  offsets_kernel<<<1, 32, 0, s>>>(counts, E, offsets);
  check_launch("moe_offsets");
}

void moe_dispatch_rows(const float* x, const int32_t* perm, int64_t M, int32_t k, int64_t D, float* rows,
                       int32_t* inv, int32_t* iota, cudaStream_t s) {
  if (M == 0 || D == 0) return;
  dispatch_rows_kernel<<<grid_for(D, M), kThreads, 0, s>>>(x, perm, M, k, D, rows, inv, iota);
  check_launch("moe_dispatch_rows");
}

void moe_combine_sorted(const float* y, const int32_t* inv, const float* w, int64_t T, int32_t k, int64_t D,
                        const float* plus, float* out, cudaStream_t s) {
  if (T == 0 || D == 0) return;
  combine_sorted_kernel<<<grid_for(D, T), kThreads, 0, s>>>(y, inv, w, T, k, D, plus, out);
  check_launch("moe_combine_sorted");
}

}  // namespace moe::cuda
