// CudaCompute (cuda_compute.h): the trainer's CUDA context and its GEMMs. Row-major GEMMs map onto cuBLAS's
// column-major ones by reading every row-major [r, c] matrix as a column-major [c, r] one:
//   y[n,m] = x W^T      ->  y^T (m x n) = op_T(W^T (k x m)) * x^T (k x n)
//   dx[n,k] = dy W      ->  dx^T (k x n) = W^T (k x m) * dy^T (m x n)
//   dW[m,k] = dy^T x    ->  dW^T (k x m) = x^T (k x n) * op_T(dy^T (m x n))
#include "train/cuda/cuda_compute.h"

#include <fmt/format.h>

#include "core/error.h"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {
void check(cudaError_t e, const char* what) {
  MOE_CHECK(e == cudaSuccess, "cuda train: {}: {}", what, cudaGetErrorString(e));
}
void check(cublasStatus_t e, const char* what) {
  MOE_CHECK(e == CUBLAS_STATUS_SUCCESS, "cuda train: {}: cuBLAS status {}", what, int(e));
}

// Scratch slots of the ops (an op's operands never share one).
enum Slot : size_t { kBf0, kBf1, kC };  // the rate measurement's operands
}  // namespace

DeviceScratch::~DeviceScratch() {
  for (auto& [p, bytes] : slots_)
    if (p) cudaFree(p);
}

void* DeviceScratch::get(size_t slot, size_t bytes) {
  if (slots_.size() <= slot) slots_.resize(slot + 1, {nullptr, 0});
  auto& [p, have] = slots_[slot];
  if (have < bytes) {
    if (p) check(cudaFree(p), "cudaFree");
    p = nullptr;
    have = 0;
    check(cudaMalloc(&p, bytes), "cudaMalloc");
    have = bytes;
  }
  return p;
}

bool CudaCompute::available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

CudaCompute::CudaCompute(GemmPrecision precision, int device) : precision_(precision), device_(device) {
  check(cudaSetDevice(device_), "cudaSetDevice");
  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  check(cublasCreate(&blas_), "cublasCreate");
  check(cublasSetStream(blas_, stream_), "cublasSetStream");
}

CudaCompute::~CudaCompute() {
  if (blas_) cublasDestroy(blas_);
  if (stream_) cudaStreamDestroy(stream_);
}

std::string CudaCompute::device_name() const {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, device_) != cudaSuccess) return "cuda device " + std::to_string(device_);
  return fmt::format("{} (sm_{}{})", p.name, p.major, p.minor);
}

void CudaCompute::sync() { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

namespace {
struct GemmTypes {
  cudaDataType_t ab;
  cublasComputeType_t compute;
};
GemmTypes types_of(GemmPrecision p) {
  // BF16 operands, FP32 accumulation (Fp8's fallback too); FP32 operands with FP32 products (pedantic: never TF32).
  return p != GemmPrecision::Fp32 ? GemmTypes{CUDA_R_16BF, CUBLAS_COMPUTE_32F}
                                  : GemmTypes{CUDA_R_32F, CUBLAS_COMPUTE_32F_PEDANTIC};
}
}  // namespace

void CudaCompute::gemm_nt(GemmPrecision p, float* y, const void* x, const void* w, int64_t n, int64_t k, int64_t m, float beta) {
  const GemmTypes t = types_of(p);
  const float alpha = 1.0f;
  check(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(m), int(n), int(k), &alpha, w, t.ab, int(k), x, t.ab,
                     int(k), &beta, y, CUDA_R_32F, int(m), t.compute, CUBLAS_GEMM_DEFAULT),
        "gemm y = x W^T");
}

void CudaCompute::gemm_nn(GemmPrecision p, float* dx, const void* dy, const void* w, int64_t n, int64_t k, int64_t m, float beta) {
  const GemmTypes t = types_of(p);
  const float alpha = 1.0f;
  check(cublasGemmEx(blas_, CUBLAS_OP_N, CUBLAS_OP_N, int(k), int(n), int(m), &alpha, w, t.ab, int(k), dy, t.ab,
                     int(m), &beta, dx, CUDA_R_32F, int(k), t.compute, CUBLAS_GEMM_DEFAULT),
        "gemm dx = dy W");
}

void CudaCompute::gemm_tn(GemmPrecision p, float* dw, const void* dy, const void* x, int64_t n, int64_t k, int64_t m, float beta) {
  const GemmTypes t = types_of(p);
  const float alpha = 1.0f;
  check(cublasGemmEx(blas_, CUBLAS_OP_N, CUBLAS_OP_T, int(k), int(m), int(n), &alpha, x, t.ab, int(k), dy, t.ab,
                     int(m), &beta, dw, CUDA_R_32F, int(k), t.compute, CUBLAS_GEMM_DEFAULT),
        "gemm dW = dy^T x");
}

double CudaCompute::measure_bf16_gemm_gflops() {
  const int64_t n = 8192, k = 8192, m = 8192;
  auto* x = static_cast<uint16_t*>(scratch_.get(kBf0, size_t(n * k) * 2));
  auto* w = static_cast<uint16_t*>(scratch_.get(kBf1, size_t(m * k) * 2));
  auto* y = static_cast<float*>(scratch_.get(kC, size_t(n * m) * 4));
  fill_bf16_uniform(x, n * k, 1, stream_);
  fill_bf16_uniform(w, m * k, 2, stream_);
  check(cudaGetLastError(), "fill");
  for (int i = 0; i < 3; ++i) gemm_nt(GemmPrecision::Bf16, y, x, w, n, k, m, 0.0f);  // warm-up, clocks up
  cudaEvent_t e0, e1;
  check(cudaEventCreate(&e0), "event");
  check(cudaEventCreate(&e1), "event");
  const int reps = 20;
  check(cudaEventRecord(e0, stream_), "event");
  for (int i = 0; i < reps; ++i) gemm_nt(GemmPrecision::Bf16, y, x, w, n, k, m, 0.0f);
  check(cudaEventRecord(e1, stream_), "event");
  check(cudaEventSynchronize(e1), "event");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, e0, e1), "event");
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * double(n) * double(k) * double(m) * reps / (double(ms) * 1e-3) / 1e9;
}

}  // namespace moe::train::cuda
