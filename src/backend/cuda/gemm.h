#pragma once
// Dense GEMMs on the tensor cores through cuBLAS: BF16 inputs, F32 accumulation and output.
#include <cublas_v2.h>

#include <cstdint>

namespace moe::cuda {

// out [T, N] (F32, row-major) = x [T, K] (BF16) @ w [N, K]^T (BF16).
void gemm_bf16(cublasHandle_t handle, const uint16_t* x, const uint16_t* w, float* out, int64_t T, int64_t N,
               int64_t K);
// Grouped: for group g, out_g [m_g, N] = x_g [m_g, K] @ w_g [N, K]^T, all groups in one cuBLAS call.
// x/w/out are device arrays of device pointers; m is a host array; groups with m_g = 0 must be left out.
void gemm_bf16_grouped(cublasHandle_t handle, const void* const* x, const void* const* w, void* const* out,
                       const int* m, int groups, int64_t N, int64_t K);

}  // namespace moe::cuda
