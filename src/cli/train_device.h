#pragma once
// `moe train --device` and `moe train-bench --device`: where the training step runs. cpu: the CPU trainer's ops
// on its thread pool; cuda: train/cuda's DeviceTrainer (the whole step resident on the GPU, train/device_step.h)
// with BF16 (default), FP8 (DeepSeek-V3's E4M3 scheme) or FP32 GEMM operands.
#include <cstdint>
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

// The flags `moe train` and `moe train-bench` share; every one but device and gemm is for --device cuda, where an
// empty one takes its default (given with --device cpu: an error).
struct TrainDeviceOptions {
  std::string device = "cpu";  // cpu or cuda
  std::string gemm = "bf16";   // bf16, fp8 or fp32 GEMM operands
  std::string expert_gemm;     // grouped (default: the routed experts' BF16 GEMMs as grouped kernels) or loop
  std::string attention;       // the score and value GEMMs: fp32 (default, no TF32), tf32 or bf16; or flash
  std::string head;            // the output heads' GEMMs: fp32 (default) or bf16 operands (FP32 accumulation)
  bool check_finite = false;   // DeviceTrainer::set_check_finite
  // --gemm fp8: the routed experts' E4M3 weights in both layouts (both, the default) or the forward one only,
  // transposed per layer in the backward (forward: half the memory of those copies), or both in the first N
  // MoE layers only (a number)
  std::string fp8_expert_weights;
  // cuda: which of the visible GPUs: this rank's index on its node modulo the GPUs (0 for one process, and for the
  // launcher's GPU ranks, which see only their own)
  int local_rank = 0;
};

// Throws moe::Error naming the flag: an unknown device or GEMM type, cuda in a build without CUDA or on a machine
// without a GPU, a cuda-only flag changed from its default with --device cpu.
TrainDevice make_train_device(const TrainDeviceOptions& o);

// --fp8-expert-weights as the number of MoE layers keeping both layouts: -1 for both (or empty), 0 for
// forward, else the number given; throws moe::Error naming the flag for anything else.
int64_t fp8_expert_both_layers(const std::string& v);

}  // namespace moe::cli
