#pragma once
// Kernels of the CUDA backend's MoE primitives (moe_primitives.cu; used by cuda_backend_moe_primitives.cpp):
// the dispatch's offsets and expert-ordered rows, and the combine from expert-ordered rows. Plain launches
// (no programmatic dependent launch), enqueue only.
#include <cuda_runtime.h>

#include <cstdint>

namespace moe::cuda {

// offsets [E + 1] = exclusive prefix sums of counts [E] (offsets[E] = the total).
void moe_offsets(const int32_t* counts, int32_t E, int32_t* offsets, cudaStream_t s);
// For sorted row i < M with assignment a = perm[i]: rows[i] = x[a / k] (D floats), inv[a] = i, iota[i] = i.
void moe_dispatch_rows(const float* x, const int32_t* perm, int64_t M, int32_t k, int64_t D, float* rows,
                       int32_t* inv, int32_t* iota, cudaStream_t s);
// out[t, d] = plus[t, d] + sum_j w[t, j] * y[inv[t * k + j], d] (plus may be null: 0), with the sum in slot
// order j and plus added last, as moe_combine of moe_plan.cu (the same floats for the same y rows).
void moe_combine_sorted(const float* y, const int32_t* inv, const float* w, int64_t T, int32_t k, int64_t D,
                        const float* plus, float* out, cudaStream_t s);

}  // namespace moe::cuda
