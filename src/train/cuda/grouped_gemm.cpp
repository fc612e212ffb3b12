// GroupedGemm (grouped_gemm.h). Row-major problems map onto cuBLAS's column-major ones as cuda_compute.cpp's:
//   nt: y^T (m x n) = op_T(W^T (k x m)) x^T (k x n)          transa T, transb N, (m, n, k), lda k, ldb k, ldc m
//   nn: dx^T (k x n) = W^T (k x m) dy^T (m x n)               transa N, transb N, (k, n, m), lda k, ldb m, ldc k
//   tn: dW^T (k x m) = x^T (k x n) op_T(dy^T (m x n))         transa N, transb T, (k, m, n), lda k, ldb m, ldc k
// (for tn the problem's `a` is dy and `b` is x, as CudaCompute::gemm_tn takes them). Each problem is its own
// group of one (the row counts differ); the pointer arrays go to the device in one copy per call.
#include "train/cuda/grouped_gemm.h"

#include <fmt/format.h>

#include "core/error.h"

namespace moe::train::cuda {

namespace {
struct Mapped {
  cublasOperation_t ta, tb;
  int m, n, k, lda, ldb, ldc;
  const void *A, *B;
};

Mapped map(GemmKind kind, const GemmProblem& p, int64_t k, int64_t m) {
  switch (kind) {
    case GemmKind::Nt:
      return {CUBLAS_OP_T, CUBLAS_OP_N, int(m), int(p.n), int(k), int(k), int(k), int(m), p.b, p.a};
    case GemmKind::Nn:
      return {CUBLAS_OP_N, CUBLAS_OP_N, int(k), int(p.n), int(m), int(k), int(m), int(k), p.b, p.a};
    case GemmKind::Tn:
      break;
  }
  return {CUBLAS_OP_N, CUBLAS_OP_T, int(k), int(m), int(p.n), int(k), int(m), int(k), p.b, p.a};
}
}  // namespace

void GroupedGemm::run(GemmKind kind, const std::vector<GemmProblem>& problems, int64_t k, int64_t m, float beta) {
  std::vector<GemmProblem> ps;
  ps.reserve(problems.size());
  for (const GemmProblem& p : problems)
    if (p.n > 0) ps.push_back(p);
  if (ps.empty() || k == 0 || m == 0) return;
  if (grouped() && run_grouped(kind, ps, k, m, beta)) return;
  run_each(kind, ps, k, m, beta);
}

bool GroupedGemm::run_grouped(GemmKind kind, const std::vector<GemmProblem>& ps, int64_t k, int64_t m, float beta) {
  const size_t P = ps.size();
  std::vector<cublasOperation_t> ta(P), tb(P);
  std::vector<int> mm(P), nn(P), kk(P), lda(P), ldb(P), ldc(P), size(P, 1);
  std::vector<float> alpha(P, 1.0f), betas(P, beta);
  std::vector<const void*> ptrs(3 * P);  // [A..., B..., C...]
  for (size_t i = 0; i < P; ++i) {
    const Mapped x = map(kind, ps[i], k, m);
    ta[i] = x.ta, tb[i] = x.tb, mm[i] = x.m, nn[i] = x.n, kk[i] = x.k;
    lda[i] = x.lda, ldb[i] = x.ldb, ldc[i] = x.ldc;
    ptrs[i] = x.A, ptrs[P + i] = x.B, ptrs[2 * P + i] = ps[i].out;
  }
  auto* dev = static_cast<void**>(buffer_(ptrs.size() * sizeof(void*)));
  // Pageable source: cudaMemcpyAsync has staged it when it returns, so `ptrs` may go; stream order keeps the
  // array in place until this call's GEMMs have read it.
  MOE_CHECK(cudaMemcpyAsync(dev, ptrs.data(), ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice, stream_) ==
                cudaSuccess,
            "cuda train: uploading the grouped GEMM's pointers failed");
  const cublasStatus_t st = cublasGemmGroupedBatchedEx(
      blas_, ta.data(), tb.data(), mm.data(), nn.data(), kk.data(), alpha.data(), dev, CUDA_R_16BF, lda.data(),
      dev + P, CUDA_R_16BF, ldb.data(), betas.data(), dev + 2 * P, CUDA_R_32F, ldc.data(), int(P), size.data(), CUBLAS_COMPUTE_32F);
  if (st == CUBLAS_STATUS_SUCCESS) return true;
  refused_ = true;
  if (log_)
    log_(fmt::format("cuda train: cublasGemmGroupedBatchedEx refused BF16 x BF16 -> FP32 (status {}); the experts' "
                     "GEMMs run one cublasGemmEx each",
                     int(st)));
  return false;
}

void GroupedGemm::run_each(GemmKind kind, const std::vector<GemmProblem>& ps, int64_t k, int64_t m, float beta) {
  const float alpha = 1.0f;
  for (const GemmProblem& p : ps) {
    const Mapped x = map(kind, p, k, m);
    const cublasStatus_t st = cublasGemmEx(blas_, x.ta, x.tb, x.m, x.n, x.k, &alpha, x.A, CUDA_R_16BF, x.lda, x.B,
                                           CUDA_R_16BF, x.ldb, &beta, p.out, CUDA_R_32F, x.ldc, CUBLAS_COMPUTE_32F,
                                           CUBLAS_GEMM_DEFAULT);
    MOE_CHECK(st == CUBLAS_STATUS_SUCCESS, "cuda train: an expert's GEMM failed: cuBLAS status {}", int(st));
  }
}

}  // namespace moe::train::cuda
