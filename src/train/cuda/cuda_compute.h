#pragma once
// The trainer's CUDA context: a device, a stream, a cuBLAS handle on it, and row-major GEMMs with FP32
// accumulation and FP32 output on BF16 operands (GemmPrecision::Bf16: each operand rounded to BF16 once, as
// mixed-precision training does) or on FP32 operands (GemmPrecision::Fp32: FP32 products, no TF32, for checking
// the plumbing tightly). DeviceTrainer (device_trainer.h) runs the step on it. (v1's CudaCompute was a per-op
// train/compute.h device that copied every operand in and out; the device-resident step replaced it.)
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>


namespace moe::train::cuda {

// Fp8: DeepSeek-V3's FP8 mixed precision (fp8_gemm.h) for the products whose widths cuBLASLt's block-scaled FP8
// GEMM takes, BF16 for the others; CudaCompute's own GEMMs read it as Bf16.
enum class GemmPrecision { Bf16, Fp32, Fp8 };

// Grow-only device buffers, one per slot (an op's operands use distinct slots).
class DeviceScratch {
 public:
  DeviceScratch() = default;
  ~DeviceScratch();
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  void* get(size_t slot, size_t bytes);

 private:
  std::vector<std::pair<void*, size_t>> slots_;
};

class CudaCompute {
 public:
  explicit CudaCompute(GemmPrecision precision = GemmPrecision::Bf16, int device = 0);
  ~CudaCompute();
  CudaCompute(const CudaCompute&) = delete;
  CudaCompute& operator=(const CudaCompute&) = delete;

  // A CUDA device is present (tests skip without one).
  static bool available();
  // "NVIDIA H200 (sm_90)"
  std::string device_name() const;
  GemmPrecision precision() const { return precision_; }

  // Row-major GEMMs on device operands:
  // y [n, m] = x [n, k] W [m, k]^T + beta y;  dx [n, k] = dy W + beta dx;  dW [m, k] = dy^T x + beta dW.
  // Operands are BF16 bits (p == Bf16) or floats (Fp32); outputs are FP32.
  void gemm_nt(GemmPrecision p, float* y, const void* x, const void* w, int64_t n, int64_t k, int64_t m, float beta);
  void gemm_nn(GemmPrecision p, float* dx, const void* dy, const void* w, int64_t n, int64_t k, int64_t m, float beta);
  void gemm_tn(GemmPrecision p, float* dw, const void* dy, const void* x, int64_t n, int64_t k, int64_t m, float beta);

  // The device's dense BF16 GEMM rate (GFLOP/s, FP32 accumulation and output) on an 8192^3 problem through the
  // same cuBLAS path as the step: the denominator of train-bench's MFU.
  double measure_bf16_gemm_gflops();

  cudaStream_t stream() const { return stream_; }
  cublasHandle_t blas() const { return blas_; }
  void sync();

 private:
  GemmPrecision precision_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  DeviceScratch scratch_;
};

}  // namespace moe::train::cuda
