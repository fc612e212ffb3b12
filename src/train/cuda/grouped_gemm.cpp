// GroupedGemm (grouped_gemm.h). The grouped path is grouped_gemm_wgmma.cu's kernel over a table built here; the
// per-problem path (the reference and the fallback) maps the row-major problems onto cuBLAS's column-major ones
// as cuda_compute.cpp's:
//   nt: y^T (m x n) = op_T(W^T (k x m)) x^T (k x n)          transa T, transb N, (m, n, k), lda k, ldb k, ldc m
//   nn: dx^T (k x n) = W^T (k x m) dy^T (m x n)               transa N, transb N, (k, n, m), lda k, ldb m, ldc k
//   tn: dW^T (k x m) = x^T (k x n) op_T(dy^T (m x n))         transa N, transb T, (k, m, n), lda k, ldb m, ldc k
// (for tn the problem's `a` is dy and `b` is x, as CudaCompute::gemm_tn takes them).
#include "train/cuda/grouped_gemm.h"

#include <fmt/format.h>

#include <cstring>

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
  last_grouped_ = want_grouped_ && run_grouped(kind, ps, k, m, beta);
  if (!last_grouped_) run_each(kind, ps, k, m, beta);
}

bool GroupedGemm::run_grouped(GemmKind kind, const std::vector<GemmProblem>& ps, int64_t k, int64_t m, float beta) {
  if (supported_ < 0) supported_ = grouped_gemm_wgmma_supported() ? 1 : 0;
  // Where the kernel does not apply: the reason, reported once (the call runs per problem).
  std::string why;
  constexpr int64_t kMaxWidth = int64_t(1) << 30;
  if (!supported_) {
    why = "the device is not sm_90";
  } else if (k % 8 != 0 || m % 8 != 0 || k > kMaxWidth || m > kMaxWidth) {
    why = fmt::format("the widths k {} and m {} are not both multiples of 8 (16-byte copies)", k, m);
  } else if (beta != 0.0f && beta != 1.0f) {
    why = fmt::format("beta is {}, not 0 or 1 (the kernel stores or adds its tile)", beta);
  } else {
    for (const GemmProblem& p : ps) {
      if (reinterpret_cast<uintptr_t>(p.a) % 16 != 0 || reinterpret_cast<uintptr_t>(p.b) % 16 != 0 ||
          reinterpret_cast<uintptr_t>(p.out) % 16 != 0) {
        why = "an operand or output is not 16-byte aligned";
        break;
      }
      if (p.n > kMaxWidth) {
        why = fmt::format("a problem has {} rows", p.n);
        break;
      }
    }
  }
  if (!why.empty()) {
    if (!warned_ && log_)
      log_(fmt::format("cuda train: the grouped expert GEMM kernel does not apply ({}); these GEMMs run one "
                       "cublasGemmEx per expert",
                       why));
    warned_ = true;
    return false;
  }
  // Tables: the problems' descriptors, then one item per 128-row tile of each problem's GEMM-M (n_p for nt and
  // nn, m for tn; every problem here has n_p > 0).
  const size_t P = ps.size();
  std::vector<GroupedItem> items;
  items.reserve(P * 4);
  for (size_t i = 0; i < P; ++i) {
    const int64_t M = kind == GemmKind::Tn ? m : ps[i].n;
    for (int64_t t = 0; t * kGroupedTileM < M; ++t) items.push_back({int32_t(i), int32_t(t)});
  }
  const size_t desc_bytes = P * sizeof(GroupedProblemDesc), bytes = desc_bytes + items.size() * sizeof(GroupedItem);
  static_assert(sizeof(GroupedProblemDesc) % alignof(GroupedItem) == 0, "items follow the descriptors");
  table_.resize(bytes);
  auto* descs = reinterpret_cast<GroupedProblemDesc*>(table_.data());
  for (size_t i = 0; i < P; ++i)
    descs[i] = {ps[i].out, static_cast<const uint16_t*>(ps[i].a), static_cast<const uint16_t*>(ps[i].b), ps[i].n};
  std::memcpy(table_.data() + desc_bytes, items.data(), items.size() * sizeof(GroupedItem));
  auto* dev = static_cast<unsigned char*>(buffer_(bytes));
  // Pageable source: cudaMemcpyAsync has staged it when it returns, so table_ may be refilled by the next call;
  // stream order keeps the device copy in place until this call's kernel has read it.
  MOE_CHECK(cudaMemcpyAsync(dev, table_.data(), bytes, cudaMemcpyHostToDevice, stream_) == cudaSuccess,
            "cuda train: uploading the grouped GEMM's table failed");
  GroupedWgmmaArgs a;
  a.kind = kind;
  a.problems = reinterpret_cast<const GroupedProblemDesc*>(dev);
  a.items = reinterpret_cast<const GroupedItem*>(dev + desc_bytes);
  a.count = int64_t(items.size());
  a.k = k, a.m = m, a.beta = beta;
  const cudaError_t e = grouped_gemm_wgmma(a, stream_);
  MOE_CHECK(e == cudaSuccess, "cuda train: the grouped expert GEMM kernel failed: {}", cudaGetErrorString(e));
  return true;
}

void GroupedGemm::run_each(GemmKind kind, const std::vector<GemmProblem>& ps, int64_t k, int64_t m, float beta) {
  const float alpha = 1.0f;
  if (k == 0 || m == 0) return;
  for (const GemmProblem& p : ps) {
    if (p.n <= 0) continue;
    const Mapped x = map(kind, p, k, m);
    const cublasStatus_t st = cublasGemmEx(blas_, x.ta, x.tb, x.m, x.n, x.k, &alpha, x.A, CUDA_R_16BF, x.lda, x.B,
                                           CUDA_R_16BF, x.ldb, &beta, p.out, CUDA_R_32F, x.ldc, CUBLAS_COMPUTE_32F,
                                           CUBLAS_GEMM_DEFAULT);
    MOE_CHECK(st == CUBLAS_STATUS_SUCCESS, "cuda train: an expert's GEMM failed: cuBLAS status {}", int(st));
  }
}

}  // namespace moe::train::cuda
