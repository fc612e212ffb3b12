#pragma once
// `moe train --device` and `moe train-bench --device`: where the training step runs. cpu: the CPU trainer's ops
// on its thread pool; cuda: train/cuda's DeviceTrainer (the whole step resident on the GPU, train/device_step.h)
// with BF16 (default), FP8 (DeepSeek-V3's E4M3 scheme) or FP32 GEMM operands.
#include <functional>
#include <memory>
#include <string>

#include "train/device_step.h"

namespace moe::cli {

struct TrainDevice {
  std::string name;                        // "cpu", or "cuda: NVIDIA H200 (sm_90), bf16 GEMMs"
  std::unique_ptr<train::DeviceStep> step;  // the whole-step device (null for the CPU)
  std::function<double()> gemm_gflops;      // the device's BF16 GEMM rate, measured when called (null: CPU)
  std::function<std::string()> gemm_summary;  // fp8: the FP8 share of the GEMM FLOPs so far (null or empty: none)
};

// Throws moe::Error naming the flag: an unknown device or GEMM type, cuda in a build without CUDA or on a machine
// without a GPU.
// expert_gemm: grouped (the routed experts' BF16 GEMMs as cuBLAS grouped GEMMs) or loop (one GEMM per expert).
// attention: fp32 (the score and value GEMMs in FP32, no TF32) or tf32.
// check_finite: DeviceTrainer::set_check_finite (cuda only).
TrainDevice make_train_device(const std::string& device, const std::string& gemm,
                              const std::string& expert_gemm = "loop", const std::string& attention = "fp32",
                              bool check_finite = false);

}  // namespace moe::cli
