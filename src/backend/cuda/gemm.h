#pragma once
// Dense GEMMs on the tensor cores through cuBLAS: BF16 inputs, F32 accumulation and output.
#include <cublas_v2.h>

#include <cstdint>

namespace moe::cuda {

// out [T, N] (F32, row-major) = x [T, K] (BF16) @ w [N, K]^T (BF16) + beta * out.
void gemm_bf16(cublasHandle_t handle, const uint16_t* x, const uint16_t* w, float* out, int64_t T, int64_t N,
               int64_t K, float beta = 0.0f);
// out [T, N] (BF16, row-major: one rounding of the F32 accumulator) = x [T, K] (BF16, rows ldx apart) @ w [N, K]^T.
void gemm_bf16_out(cublasHandle_t handle, const uint16_t* x, int64_t ldx, const uint16_t* w, uint16_t* out, int64_t T,
                   int64_t N, int64_t K);
// A batch of `count` products, operand b starting at x + b * sx, w + b * sw, out + b * so (elements):
// out_b [T, N] (row-major, rows ldo apart; F32 or BF16 by out_type: one rounding of the F32 accumulator) =
// x_b [T, K] (BF16, rows ldx apart) @ w_b, with w_b [N, K] (rows ldw apart) transposed, or with w_kn, w_b [K,
// N] as it is (rows ldw apart).
void gemm_bf16_strided_batched(cublasHandle_t handle, const uint16_t* x, int64_t ldx, int64_t sx,
                               const uint16_t* w, int64_t ldw, int64_t sw, bool w_kn, void* out,
                               cudaDataType out_type, int64_t ldo, int64_t so, int64_t T, int64_t N,
                               int64_t K, int64_t count);
}  // namespace moe::cuda
