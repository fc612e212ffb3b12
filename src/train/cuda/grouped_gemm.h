#pragma once
// Grouped GEMMs for the routed experts (issue 11: "dropless grouped expert GEMMs"): a list of row-major problems
// that share k and m but not the row count (each expert's tokens), BF16 operands, FP32 accumulation and FP32
// output. The three products are CudaCompute's (cuda_compute.h), per problem p with rows n_p:
//   nt: y_p [n_p, m] = x_p [n_p, k] W_p [m, k]^T + beta y_p      (forward)
//   nn: dx_p [n_p, k] = dy_p [n_p, m] W_p [m, k] + beta dx_p      (input gradient)
//   tn: dW_p [m, k] = dy_p^T x_p + beta dW_p                      (weight gradient; n_p is the summed dimension)
// Grouped (set_grouped(true), the default): one launch of our Hopper wgmma kernel per call
// (grouped_gemm_wgmma.cu) over a table of (problem, 128-row tile) work items. Otherwise, and where that kernel
// does not apply (a device other than sm_90, k or m not a multiple of 8, operands not 16-byte aligned: reported
// once on `log`), one cublasGemmEx per problem (run_each, the reference). cuBLAS's own grouped call
// (cublasGemmGroupedBatchedEx) refuses BF16 x BF16 -> FP32 (status 15 on CUDA 13) and is not used.
// Problems with n_p == 0 are skipped (out untouched, whatever beta). Problems of one call must not share an
// output (they run concurrently). `grouped()` says whether the last call ran the grouped kernel.
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

// The grouped kernel's tables (grouped_gemm_wgmma.cu), uploaded in one copy per call: `problems` descriptors,
// then `items` work items. A work item is one CTA row of the grid: rows tile*128 .. +127 of the problem's GEMM-M
// (n_p for nt and nn, m for tn), all GEMM-N tiles (gridDim.x).
struct GroupedProblemDesc {
  float* out;
  const uint16_t* a;
  const uint16_t* b;
  int64_t n;
};
struct GroupedItem {
  int32_t problem, tile;
};
constexpr int kGroupedTileM = 128;  // GEMM-M rows per work item (the kernel's 2 warpgroups x 64)

struct GroupedWgmmaArgs {
  GemmKind kind = GemmKind::Nt;
  const GroupedProblemDesc* problems = nullptr;  // device
  const GroupedItem* items = nullptr;             // device
  int64_t count = 0;                              // work items
  int64_t k = 0, m = 0;                           // the call's widths (multiples of 8)
  float beta = 0.0f;
};
// Whether the current device runs the kernel (sm_90: the library is built for sm_90a only).
bool grouped_gemm_wgmma_supported();
// Launches the kernel on `stream` (gridDim.y over at most 65535 items per launch; more are split); the first
// CUDA error, cudaErrorInvalidValue for widths that are not positive multiples of 8 or a beta other than 0
// and 1. The tables' pointers must be 16-byte aligned (GroupedGemm checks).
cudaError_t grouped_gemm_wgmma(const GroupedWgmmaArgs& args, cudaStream_t stream);

class GroupedGemm {
 public:
  // ptr_buffer: device memory for the kernel's tables (grow-only, the caller's; table_bytes() of the problems).
  using Buffer = std::function<void*(size_t bytes)>;
  GroupedGemm(cublasHandle_t blas, cudaStream_t stream, Buffer ptr_buffer, std::function<void(const std::string&)> log)
      : blas_(blas), stream_(stream), buffer_(std::move(ptr_buffer)), log_(std::move(log)) {}

  void run(GemmKind kind, const std::vector<GemmProblem>& problems, int64_t k, int64_t m, float beta);
  void set_grouped(bool on) { want_grouped_ = on; }
  bool grouped() const { return last_grouped_; }
  // The per-problem cuBLAS path whatever set_grouped says (the reference of the tests and the fallback).
  void run_each(GemmKind kind, const std::vector<GemmProblem>& problems, int64_t k, int64_t m, float beta);

 private:
  bool run_grouped(GemmKind kind, const std::vector<GemmProblem>& ps, int64_t k, int64_t m, float beta);

  cublasHandle_t blas_;
  cudaStream_t stream_;
  Buffer buffer_;
  std::function<void(const std::string&)> log_;
  bool want_grouped_ = true, last_grouped_ = false;
  int supported_ = -1;   // the device runs the kernel (queried at the first grouped call)
  bool warned_ = false;  // the fallback was reported
  std::vector<unsigned char> table_;  // host staging of the tables (reused across calls)
};

}  // namespace moe::train::cuda
