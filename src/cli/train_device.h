#pragma once
// `moe train --device` and `moe train-bench --device`: the device the trainer's GEMMs, attention and
// cross-entropy run on (train/compute.h). cpu: the CPU trainer's ops; cuda: train/cuda's CudaCompute with BF16
// (default) or FP32 GEMM operands.
#include <functional>
#include <memory>
#include <string>

#include "train/compute.h"

namespace moe::cli {

struct TrainDevice {
  std::string name;                        // "cpu", or "cuda: NVIDIA H200 (sm_90), bf16 GEMMs"
  std::unique_ptr<train::Compute> compute;  // null for the CPU (the trainer then uses its thread pool)
  std::function<double()> gemm_gflops;      // the device's BF16 GEMM rate, measured when called (null: CPU)
};

// Throws moe::Error naming the flag: an unknown device or GEMM type, cuda in a build without CUDA or on a machine
// without a GPU.
TrainDevice make_train_device(const std::string& device, const std::string& gemm);

}  // namespace moe::cli
