#pragma once
// Grouped GEMMs for the routed experts (issue 11: "dropless grouped expert GEMMs"): a list of row-major problems
// that share k and m but not the row count (each expert's tokens), BF16 operands, FP32 accumulation and FP32
// output, run as one cublasGemmGroupedBatchedEx call (cuBLAS >= 12.5) instead of one cublasGemmEx per expert.
// The three products are CudaCompute's (cuda_compute.h), per problem p with rows n_p:
//   nt: y_p [n_p, m] = x_p [n_p, k] W_p [m, k]^T + beta y_p      (forward)
//   nn: dx_p [n_p, k] = dy_p [n_p, m] W_p [m, k] + beta dx_p      (input gradient)
//   tn: dW_p [m, k] = dy_p^T x_p + beta dW_p                      (weight gradient; n_p is the summed dimension)
// Problems of one call must not share an output (they run concurrently). Where cuBLAS refuses the grouped call
// (an older library, an unsupported type combination), the same problems run one cublasGemmEx each, once
// reported on `log`, so the step works either way; `grouped()` says which path ran last.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moe::train::cuda {

struct GemmProblem {
  float* out = nullptr;       // y, dx or dW
  const void* a = nullptr;    // BF16: x (nt), dy (nn, tn)
  const void* b = nullptr;    // BF16: W (nt, nn), x (tn)
  int64_t n = 0;              // rows of this problem (0: skipped)
};

enum class GemmKind { Nt, Nn, Tn };

class GroupedGemm {
 public:
  // ptr_buffer: device memory for the pointer arrays, at least 3 x problems pointers (grow-only, the caller's).
  using Buffer = std::function<void*(size_t bytes)>;
  GroupedGemm(cublasHandle_t blas, cudaStream_t stream, Buffer ptr_buffer, std::function<void(const std::string&)> log)
      : blas_(blas), stream_(stream), buffer_(std::move(ptr_buffer)), log_(std::move(log)) {}

  void run(GemmKind kind, const std::vector<GemmProblem>& problems, int64_t k, int64_t m, float beta);
  void set_grouped(bool on) { want_grouped_ = on; }
  bool grouped() const { return want_grouped_ && !refused_; }

 private:
  bool run_grouped(GemmKind kind, const std::vector<GemmProblem>& ps, int64_t k, int64_t m, float beta);
  void run_each(GemmKind kind, const std::vector<GemmProblem>& ps, int64_t k, int64_t m, float beta);

  cublasHandle_t blas_;
  cudaStream_t stream_;
  Buffer buffer_;
  std::function<void(const std::string&)> log_;
  bool want_grouped_ = true, refused_ = false;
};

}  // namespace moe::train::cuda
