#pragma once
// `moe train-bench`: training throughput on the CPU against the machine's FP32 GEMM rate measured in the same run
// (the CPU backend's tiled F32 matmul on the same number of threads), so the figure says how much of the machine
// the trainer uses. A fresh model of the config, random token ids (never zeros), whole optimiser steps.
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "io/model_config.h"
#include "train/memory_plan.h"

namespace moe::dist {
class Communicator;
}

namespace moe::train {

class DeviceStep;

struct TrainBenchOptions {
  std::string config_path;
  int64_t seq_len = 64, batch = 4, steps = 3;  // timed steps, after one untimed warm-up step
  // Sequences per forward/backward (0: batch): an optimiser step accumulates batch / micro_batch of them, as
  // `moe train --micro-batch` does (the optimizer's cost spread over more tokens, activations sized by the micro-batch).
  int64_t micro_batch = 0;
  int threads = 0;                             // 0: every core
  // A whole-step device (train/device_step.h: everything resident there) and its dense GEMM rate in GFLOP/s
  // measured in this run (the denominator of the fraction); null: the CPU and its FP32 rate.
  DeviceStep* step = nullptr;
  std::string device = "cpu";
  std::function<double()> device_gemm_gflops;
  std::string moments = "f32";  // AdamW moments: f32 or bf16 (AdamW::bf16_moments)
  PlanAttention attention = PlanAttention::Gemm;  // the device's attention mode (--attention), for the memory plan
  PlanGemm gemm = PlanGemm::Bf16;                 // ... and its projections' GEMMs (--gemm fp8: Fp8)
  int64_t fp8_expert_both_layers = 0;  // ... Fp8ForwardExperts: the MoE layers keeping both layouts
  bool profile = false;         // a device's time by op class over the timed steps
  // Data parallelism (--dp N): each of the communicator's ranks runs --batch sequences a step (its own random
  // tokens) and the gradients are all-reduced (DistributedTraining, ZeRO-0), so a step is N x --batch sequences;
  // null: one process.
  dist::Communicator* comm = nullptr;
  std::function<void(const std::string&)> log;  // progress lines (the memory plan); null: none
};

struct TrainBenchResult {
  std::string device;
  int threads = 0;
  int ranks = 1;                    // data-parallel ranks (each with its own device or CPU)
  int64_t tokens_per_step = 0;      // per optimiser step (every micro-batch of every rank)
  int64_t micro_batches = 1;        // forward/backward passes per optimiser step
  double step_seconds = 0;          // mean over the timed steps
  double tokens_per_s = 0;
  double flops_per_token = 0;       // forward + backward: 3 x 2 x multiply-adds of every GEMM and attention product
  double train_gflops = 0;          // flops_per_token x tokens_per_s / 1e9
  double gemm_gflops = 0;           // the measured GEMM rate (CPU: FP32; a device: its own, e.g. BF16 on a GPU)
  double fraction = 0;              // train_gflops / (ranks x gemm_gflops): the share of each rank's rate
  std::string moments;
  // A device's memory (GiB): the plan's estimate (train/memory_plan.h) printed before allocating, and what
  // cudaMemGetInfo measured (free before the arenas, most in use during the steps).
  double plan_gib = 0, plan_params_gib = 0, plan_activations_gib = 0, plan_weight_copies_gib = 0;
  double free_before_gib = 0, peak_used_gib = 0;
  std::vector<std::pair<std::string, double>> profile_ms;  // per timed step, by op class (--profile)
};

TrainBenchResult run_train_bench(const TrainBenchOptions& options);
std::string bench_json(const TrainBenchResult& r);

// Multiply-adds of one token's forward through every GEMM (attention projections, FFN or routed top-k + shared
// experts and router, the head; the MTP module's projection, layer and head) and the attention products over an
// average causal context of (t + 1) / 2; times 6 for forward + backward flops.
double train_flops_per_token(const ModelConfig& c, int64_t seq_len);

}  // namespace moe::train
