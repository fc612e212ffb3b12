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

}  // namespace moe::cuda
