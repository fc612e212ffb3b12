#pragma once
// DeviceTrainer: the whole training step on one CUDA GPU (issue 11, v2; train/device_step.h's seam). Parameters
// (FP32 masters), gradients and AdamW moments live in four device arenas allocated once when a model is bound;
// activations live in grow-only named device buffers allocated at the first step of a shape and reused after.
// The host sends the batch's token ids and targets, reads back the routing of each MoE layer (n x K expert ids,
// one small sync per MoE layer: the experts' GEMMs are sized from it) and a few scalars (losses, the gradient
// norm). GEMMs: cuBLAS, BF16 operands with FP32 accumulation (or FP32 operands, no TF32: --gemm fp32; or E4M3 with
// DeepSeek-V3's fine-grained scales where the widths allow: --gemm fp8, fp8_gemm.h); the MoE
// gate and the output head in FP32 whatever the mode (V3's higher-precision exceptions, as the CPU trainer's
// `fp32` flag marks them). Every other op is a kernel of kernels.h, each tested against its CPU twin.
#include <map>
#include <memory>
#include <string>

#include "train/cuda/cuda_compute.h"
#include "train/cuda/kernels.h"
#include "train/device_step.h"

namespace moe::train::cuda {

class DeviceTrainer final : public DeviceStep {
 public:
  explicit DeviceTrainer(GemmPrecision precision = GemmPrecision::Bf16, int device = 0);
  ~DeviceTrainer() override;
  DeviceTrainer(const DeviceTrainer&) = delete;
  DeviceTrainer& operator=(const DeviceTrainer&) = delete;

  static bool available() { return CudaCompute::available(); }
  static int device_count();  // the visible CUDA devices (0 when none or no driver)
  std::string device_name() const;
  GemmPrecision precision() const;
  // The device's dense BF16 GEMM rate (GFLOP/s) through the same cuBLAS path (train-bench's denominator).
  double measure_bf16_gemm_gflops();
  // --gemm fp8: the FLOPs the projections ran in FP8 and in BF16 (widths cuBLASLt's FP8 path refuses) so far,
  // e.g. "fp8 GEMMs: 97.1 % of the projections' FLOPs (... GFLOP FP8, ... GFLOP BF16), 42 weight quantisations";
  // empty in the other modes.
  std::string gemm_summary() const;

  LossParts forward_backward(TrainModel& m, const std::vector<int32_t>& ids, int64_t b, int64_t t,
                             const Objective& obj, ExpertLoads* loads, const std::vector<uint8_t>* mask) override;
  LossParts forward_loss(TrainModel& m, const std::vector<int32_t>& ids, int64_t b, int64_t t, const Objective& obj,
                         const std::vector<uint8_t>* mask) override;
  void zero_grad(TrainModel& m) override;
  void scale_gradients(TrainModel& m, double s) override;
  double global_grad_norm(TrainModel& m) override;
  StepStats adamw_step(TrainModel& m, const AdamW& opt, double lr, double clip_norm, int64_t step) override;
  void pull(TrainModel& m) override;
  void push(TrainModel& m) override;
  void check_fits(int64_t parameters) override;
  void set_bf16_moments(bool bf16) override;
  DeviceMemory memory() override;
  void set_profile(bool on) override;
  std::vector<std::pair<std::string, double>> profile_ms() override;
  void synchronize() override;
  void all_reduce_gradients(TrainModel& m, dist::Communicator& comm) override;
  void reduce_during_next_backward(TrainModel& m, dist::Communicator& comm) override;
  // BF16: the routed experts' GEMMs as grouped GEMMs (true, the default: the same sums as the loop, 2.7-4.4x faster
  // on an H200) or one GEMM per expert (false, the reference).
  void set_grouped_experts(bool on);  // before the first step (the masters' storage follows it)
  // The master values stored split (BF16 hi + int16 lo: the grouped experts' weights, read by their GEMMs as
  // they lie, device_impl.h), 0 before the first step or when none are.
  int64_t split_master_values() const;
  // The attention's score and value GEMMs: FP32 without TF32 (the default and the reference), TF32, or BF16
  // operands with FP32 accumulation (kernels.h's AttnPrecision; mixed-precision training's choice); or Flash: the
  // flash-style kernels with Bf16's roundings (attention_flash.cu: lse [b, H, t] kept instead of the [b, H, t, t]
  // probabilities; heads without a flash kernel run the Bf16 GEMMs, noted once on stderr).
  void set_attention(AttnPrecision p);
  // The output heads' GEMMs: FP32 operands (true, the default, as the CPU trainer) or BF16 operands with FP32
  // accumulation (false; in --gemm fp8 too: the head never runs in FP8).
  void set_head_fp32(bool on);
  // --gemm fp8 with grouped experts: how many MoE layers (the first n of the forward, the MTP module's last)
  // keep the routed experts' E4M3 weights in both layouts; the others keep only the forward one, transposed
  // per layer in the backward (half the FP8 weight memory, the same products; fp8_experts.h's Layouts). -1
  // (the default): every layer. Before the first step.
  void set_fp8_expert_both_layers(int64_t n);
  // Whether those per-layer transposes run ahead on a side stream, overlapping the backward of the layer
  // before (the default), or on the step's stream when the layer's backward needs them (the same bytes either
  // way).
  void set_fp8_expert_prefetch(bool on);
  // Checks every layer's activations and gradients for NaN or infinity (a sum per tensor, one more sync per step)
  // and throws naming the first tensor that has them: for finding where a diverging run breaks. Off by default.
  void set_check_finite(bool on);
  // all_reduce_gradients over a host communicator passes the gradients through a pinned host buffer of this many
  // values, piece by piece (16 M: 64 MB; the tests make it small so that a small model takes several pieces).
  void set_host_reduce_piece(int64_t values);
  // The last forward's routing of each MoE layer, by its gate's name (as ExpertLoads): [n, K] expert ids in the
  // order top-k picked them (for comparing two runs' routings).
  std::map<std::string, std::vector<int32_t>> last_routing(const TrainModel& m) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe::train::cuda
