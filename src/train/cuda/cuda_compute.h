#pragma once
// The trainer's ops on a CUDA GPU (train/compute.h), v1: host arrays are copied to the device for each op, the
// op runs there, and its outputs come back, so the model code (layer.cpp, model.cpp) is the CPU trainer's,
// unchanged, and each GPU op has its CPU twin. GEMMs go through cuBLAS with FP32 accumulation and FP32 output
// on BF16 operands (GemmPrecision::Bf16: each operand rounded to BF16 once, as mixed-precision training does)
// or on FP32 operands (GemmPrecision::Fp32: FP32 products, no TF32, for checking the plumbing tightly). The
// GEMMs the model marks fp32 (MoE gate, output head: V3's higher-precision exceptions) are FP32 in either mode.
// Attention and the cross-entropy are the FP32 kernels of kernels.h. The device-resident step (weights,
// activations and AdamW on the device, no copies) is the next step: docs/training.md.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "train/compute.h"

namespace moe::train::cuda {

enum class GemmPrecision { Bf16, Fp32 };

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

class CudaCompute final : public Compute {
 public:
  explicit CudaCompute(GemmPrecision precision = GemmPrecision::Bf16, int device = 0);
  ~CudaCompute() override;
  CudaCompute(const CudaCompute&) = delete;
  CudaCompute& operator=(const CudaCompute&) = delete;

  // A CUDA device is present (tests skip without one).
  static bool available();
  // "NVIDIA H200 (sm_90)"
  std::string device_name() const;
  GemmPrecision precision() const { return precision_; }

  const char* name() const override { return "cuda"; }
  void matmul_forward(float* y, const float* x, const float* w, int64_t n, int64_t k, int64_t m, bool fp32) override;
  void matmul_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n, int64_t k,
                       int64_t m, bool fp32) override;
  void attention_forward(float* out, float* probs, const float* q, const float* kv, const float* k_rope,
                         const MlaDims& d, int64_t b) override;
  void attention_backward(float* dq, float* dkv, float* dk_rope, const float* dout, const float* probs,
                          const float* q, const float* kv, const float* k_rope, const MlaDims& d, int64_t b) override;
  double cross_entropy(float* logits, const int32_t* targets, int64_t n, int64_t vocab, double dscale) override;

  // Device GEMMs for callers that keep operands on the device (the bench's rate, the device-resident step):
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
  // The operand of a GEMM in the precision's type, on the device: src is a device float array of count values.
  const void* operand(GemmPrecision p, size_t slot, const float* src, int64_t count);
  float* upload(size_t slot, const float* host, int64_t count);
  void download(float* host, const float* dev, int64_t count);

  GemmPrecision precision_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  DeviceScratch scratch_;
};

}  // namespace moe::train::cuda
