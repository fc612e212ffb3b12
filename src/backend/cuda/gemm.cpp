// cuBLAS calls. Row-major out[T, N] = x[T, K] W[N, K]^T is, in cuBLAS's column-major terms,
// out^T [N, T] = op(W) x^T with W seen as a K x N column-major matrix (op = T) and x as K x T (op = N).
#include "backend/cuda/gemm.h"

#include <vector>

#include "core/error.h"

namespace moe::cuda {

namespace {
void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS error {} in {}", int(s), what);
}
}  // namespace

void gemm_bf16(cublasHandle_t handle, const uint16_t* x, const uint16_t* w, float* out, int64_t T, int64_t N,
               int64_t K) {
  const float alpha = 1.0f, beta = 0.0f;
  check_cublas(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(T), int(K), &alpha, w, CUDA_R_16BF, int(K),
                            x, CUDA_R_16BF, int(K), &beta, out, CUDA_R_32F, int(N), CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx");
}

void gemm_bf16_grouped(cublasHandle_t handle, const void* const* x, const void* const* w, void* const* out,
                       const int* m, int groups, int64_t N, int64_t K) {
  if (groups == 0) return;
  const size_t g = size_t(groups);
  std::vector<cublasOperation_t> ta(g, CUBLAS_OP_T), tb(g, CUBLAS_OP_N);
  std::vector<int> ms(g, int(N)), ns(m, m + groups), ks(g, int(K)), lda(g, int(K)), ldb(g, int(K)), ldc(g, int(N)),
      sizes(g, 1);
  std::vector<float> alpha(g, 1.0f), beta(g, 0.0f);
  check_cublas(cublasGemmGroupedBatchedEx(handle, ta.data(), tb.data(), ms.data(), ns.data(), ks.data(), alpha.data(),
                                          w, CUDA_R_16BF, lda.data(), x, CUDA_R_16BF, ldb.data(), beta.data(), out,
                                          CUDA_R_32F, ldc.data(), groups, sizes.data(), CUBLAS_COMPUTE_32F),
               "cublasGemmGroupedBatchedEx");
}

}  // namespace moe::cuda
