// cuBLAS calls. Row-major out[T, N] = x[T, K] W[N, K]^T is, in cuBLAS's column-major terms,
// out^T [N, T] = op(W) x^T with W seen as a K x N column-major matrix (op = T) and x as K x T (op = N).
#include "backend/cuda/gemm.h"

#include "core/error.h"

namespace moe::cuda {

namespace {
void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS error {} in {}", int(s), what);
}
}  // namespace

void gemm_bf16(cublasHandle_t handle, const uint16_t* x, const uint16_t* w, float* out, int64_t T, int64_t N,
               int64_t K, float beta) {
  const float alpha = 1.0f;
  check_cublas(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(T), int(K), &alpha, w, CUDA_R_16BF, int(K),
                            x, CUDA_R_16BF, int(K), &beta, out, CUDA_R_32F, int(N), CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx");
}

void gemm_bf16_out(cublasHandle_t handle, const uint16_t* x, int64_t ldx, const uint16_t* w, uint16_t* out, int64_t T,
                   int64_t N, int64_t K) {
  const float alpha = 1.0f, beta = 0.0f;
  check_cublas(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(T), int(K), &alpha, w, CUDA_R_16BF, int(K), x,
                            CUDA_R_16BF, int(ldx), &beta, out, CUDA_R_16BF, int(N), CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx (BF16 out)");
}

void gemm_bf16_strided_batched(cublasHandle_t handle, const uint16_t* x, int64_t ldx, int64_t sx,
                               const uint16_t* w, int64_t ldw, int64_t sw, bool w_kn, void* out,
                               cudaDataType out_type, int64_t ldo, int64_t so, int64_t T, int64_t N,
                               int64_t K, int64_t count) {
  // w [K, N] row-major is N x K column-major as it is (op N); w [N, K] row-major is K x N (op T).
  const float alpha = 1.0f, beta = 0.0f;
  check_cublas(cublasGemmStridedBatchedEx(handle, w_kn ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, int(N),
                                          int(T), int(K), &alpha, w, CUDA_R_16BF, int(ldw), sw, x,
                                          CUDA_R_16BF, int(ldx), sx, &beta, out, out_type, int(ldo), so,
                                          int(count), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmStridedBatchedEx");
}

}  // namespace moe::cuda
