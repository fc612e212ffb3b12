// The device memory plan (train/memory_plan.h) on the project's configs: the arenas are exactly 16 (FP32
// moments) or 12 (BF16) bytes a parameter; activations scale linearly with the batch at a fixed length and grow
// faster than linearly with the length (the [t, t] attention probabilities); train-mid (issue 11's mid-size MoE)
// fits on one H200 with BF16 moments at 2048 tokens a step and does not with FP32 moments. (Against what the
// device measures: tests/train_cuda's CudaDeviceStep.MemoryPlanMatchesMeasured.)
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "train/memory_plan.h"
#include "train/params.h"

namespace moe::train {
namespace {

ModelConfig load(const std::string& path) {
  std::ifstream in(path);
  return ModelConfig::from_json(nlohmann::json::parse(in), path);
}

TEST(MemoryPlan, ArenasActivationsAndTheMidModel) {
  const ModelConfig mid = load("bench/configs/train-mid.json");
  const double params = double(parameter_count(mid));
  const DeviceMemoryPlan f32 = device_memory_plan(mid, 1, 2048, false), bf = device_memory_plan(mid, 1, 2048, true);
  EXPECT_EQ(f32.arenas, 16.0 * params);
  EXPECT_EQ(bf.arenas, 12.0 * params);
  EXPECT_EQ(f32.activations, bf.activations);
  const double GiB = 1073741824.0;
  std::printf("train-mid (%.3g parameters) at 1 x 2048: arenas %.1f GiB (bf16 moments), activations %.1f GiB, "
              "temporaries %.1f GiB, total %.1f GiB\n",
              params, bf.arenas / GiB, bf.activations / GiB, bf.temporaries / GiB, bf.total() / GiB);
  const double h200 = 139.0 * GiB;  // what the device reports free
  EXPECT_LT(bf.total(), h200);
  EXPECT_GT(f32.total(), h200);
  // (Nearly) linear in the batch at a fixed length; superlinear in the length.
  const DeviceMemoryPlan b2 = device_memory_plan(mid, 2, 2048, true), t2 = device_memory_plan(mid, 1, 4096, true);
  EXPECT_NEAR(b2.activations, 2.0 * bf.activations, 1e-6 * bf.activations);  // (the bias vectors do not scale)
  EXPECT_GT(t2.activations, 2.0 * bf.activations);
  // The default model: the activations at 64 x 512 dominate its 33 M parameters' arenas.
  const ModelConfig def = load("bench/configs/train-default.json");
  const DeviceMemoryPlan d = device_memory_plan(def, 64, 512, false);
  EXPECT_GT(d.activations, d.arenas);
}

// The attention modes at train-mid's 1 x 2048: flash keeps lse [H, t] instead of each layer's probabilities
// [H, t, t] (the MTP layer's at t - 2) and needs no [t, t] temporary; the bf16 GEMMs add their operand copies.
TEST(MemoryPlan, AttentionModes) {
  const ModelConfig mid = load("bench/configs/train-mid.json");
  const int64_t t = 2048;
  const DeviceMemoryPlan g = device_memory_plan(mid, 1, t, true), gb = device_memory_plan(mid, 1, t, true,
                                                                                           PlanAttention::GemmBf16),
                         fl = device_memory_plan(mid, 1, t, true, PlanAttention::Flash),
                         fl2 = device_memory_plan(mid, 1, 2 * t, true, PlanAttention::Flash);
  EXPECT_EQ(fl.arenas, g.arenas);
  EXPECT_EQ(gb.activations, g.activations);
  const double H = double(mid.num_attention_heads), L = double(mid.num_hidden_layers), tm = double(t - 2);
  const double probs = L * H * double(t) * double(t - 1) + (mid.num_nextn_predict_layers > 0 ? H * tm * (tm - 1) : 0);
  EXPECT_NEAR(g.activations - fl.activations, 4.0 * probs, 1.0);
  EXPECT_LT(fl.temporaries, g.temporaries);  // no ds [H, t, t]
  EXPECT_GT(gb.temporaries, g.temporaries);  // + the BF16 copies, P / dS [H, t, t] among them
  // Flash's activations are linear in the length (up to the MTP layer's t - 2 and the logits' t - 1).
  EXPECT_NEAR(fl2.activations, 2.0 * fl.activations, 1e-3 * fl.activations);
  // Two 2,048-token sequences a micro-batch fit what an H200 reports free (138.7 GiB) with flash attention: the
  // setting of train-mid's best MFU (bench/RESULTS.md: planned 136.9 GiB, measured 137.6 on 2026-12-03). Neither
  // the BF16 GEMM attention (its [H, t, t] probabilities) nor a third sequence does.
  const double h200_free = 138.7 * 1073741824.0;
  const DeviceMemoryPlan mb2 = device_memory_plan(mid, 2, t, true, PlanAttention::Flash),
                         mb3 = device_memory_plan(mid, 3, t, true, PlanAttention::Flash),
                         gb2 = device_memory_plan(mid, 2, t, true, PlanAttention::GemmBf16);
  EXPECT_LT(mb2.total(), h200_free);
  EXPECT_GT(mb3.total(), h200_free);
  EXPECT_GT(gb2.total(), h200_free);
  const double GiB = 1073741824.0;
  std::printf("train-mid at 1 x 2048, bf16 moments: total %.1f GiB (fp32 attention), %.1f GiB (bf16), %.1f GiB "
              "(flash); activations %.1f / %.1f GiB (gemm / flash)\n",
              g.total() / GiB, gb.total() / GiB, fl.total() / GiB, g.activations / GiB, fl.activations / GiB);
}

// --gemm fp8 (train/cuda/fp8_gemm.h, fp8_experts.h): every projection's weight again as E4M3 in both layouts
// (2 bytes a value: all of train-mid's parameters but the embedding, the heads, the routers and the norms),
// the activations only GEMMs read kept in FP32, the quantisers' scratch. Anchored on one measurement:
// train-mid cut to 6 layers at 2 x 2048 with flash attention and BF16 moments, cudaMemGetInfo's peak during
// `moe train-bench` was 60.55 GiB under --gemm bf16 and 68.08 GiB under --gemm fp8 (H100, 2026-12-05,
// bench/RESULTS.md; the BF16 plan then said 59.92 for both).
TEST(MemoryPlan, Fp8Gemms) {
  const ModelConfig mid = load("bench/configs/train-mid.json");
  const int64_t t = 2048;
  const DeviceMemoryPlan bf = device_memory_plan(mid, 1, t, true, PlanAttention::Flash),
                         f8 = device_memory_plan(mid, 1, t, true, PlanAttention::Flash, PlanGemm::Fp8);
  EXPECT_EQ(bf.weight_copies, 0.0);
  EXPECT_EQ(f8.arenas, bf.arenas);
  // The projections' values, counted from the parameter total: less the embedding and the head [V, D], each
  // MoE layer's router [E, D], and the norms (two a layer and the latent one; the MTP module's three; the
  // model's final norm).
  const double D = double(mid.hidden_size), V = double(mid.vocab_size), E = double(mid.n_routed_experts),
               r = double(mid.kv_lora_rank);
  const int64_t layers = mid.num_hidden_layers + mid.num_nextn_predict_layers;
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < layers; ++l) moe_layers += mid.is_moe_layer(l) ? 1 : 0;
  const double norms = double(layers) * (2 * D + r) + 3 * D + D;
  const double projections = double(parameter_count(mid)) - 2 * V * D - double(moe_layers) * E * D - norms;
  EXPECT_NEAR(f8.weight_copies, 2.0 * projections, 1e-3 * 2.0 * projections);  // + the scales, ~1e-4
  EXPECT_GT(f8.activations, bf.activations);  // a, c and the dense MLP's act in FP32
  // The whole train-mid fits an H200 (138.7 GiB free) at 1 x 2048 under BF16 but not under FP8: 17.6 GiB of
  // E4M3 weights on top of the same 12 bytes a parameter of arenas.
  const double h200_free = 138.7 * 1073741824.0;
  EXPECT_LT(bf.total(), h200_free);
  EXPECT_GT(f8.total(), h200_free);
  EXPECT_GT(f8.temporaries, bf.temporaries);  // the quantisers' operands
  // --fp8-expert-weights forward: the routed experts' copies in one layout (1 byte a value instead of 2) and
  // two layers' transposed copies (one read, the next made); the whole train-mid then fits at 1 x 2048.
  const DeviceMemoryPlan fw =
      device_memory_plan(mid, 1, t, true, PlanAttention::Flash, PlanGemm::Fp8ForwardExperts);
  const double Fm = double(mid.moe_intermediate_size), expert_values = E * 3 * D * Fm;
  EXPECT_NEAR(f8.weight_copies - fw.weight_copies, double(moe_layers) * expert_values,
              1e-3 * double(moe_layers) * expert_values);
  EXPECT_NEAR(fw.temporaries - f8.temporaries, 2 * expert_values, 1e-3 * expert_values);
  EXPECT_LT(fw.total(), h200_free);
  // --fp8-expert-weights N: both layouts in N MoE layers, each adding one layout's bytes; with one layer
  // short of all, one shared copy; with all of them, none: the plan equals both's.
  for (int64_t keep : {int64_t(1), int64_t(4), moe_layers - 1, moe_layers, moe_layers + 3}) {
    const DeviceMemoryPlan part =
        device_memory_plan(mid, 1, t, true, PlanAttention::Flash, PlanGemm::Fp8ForwardExperts, keep);
    const double kept = double(std::min(keep, moe_layers)),
                 shared = double(std::min<int64_t>(2, moe_layers - std::min(keep, moe_layers)));
    EXPECT_NEAR(part.weight_copies - fw.weight_copies, kept * expert_values, 1e-3 * kept * expert_values)
        << keep;
    EXPECT_NEAR(part.temporaries - f8.temporaries, shared * expert_values, 1e-3 * expert_values) << keep;
  }
  EXPECT_DOUBLE_EQ(
      device_memory_plan(mid, 1, t, true, PlanAttention::Flash, PlanGemm::Fp8ForwardExperts, moe_layers)
          .total(),
      f8.total());
  // The measured anchor: 6 layers at 2 x 2048.
  ModelConfig six = mid;
  six.num_hidden_layers = 6;
  const double GiB = 1073741824.0;
  const DeviceMemoryPlan bf6 = device_memory_plan(six, 2, t, true, PlanAttention::Flash),
                         f86 = device_memory_plan(six, 2, t, true, PlanAttention::Flash, PlanGemm::Fp8);
  std::printf(
      "train-mid, 6 layers, 2 x 2048, flash, bf16 moments: plan %.2f GiB under bf16 (measured peak 60.55), "
      "%.2f GiB under fp8 (FP8 weights %.2f; measured peak 68.08)\n",
      bf6.total() / GiB, f86.total() / GiB, f86.weight_copies / GiB);
  EXPECT_NEAR(f86.total() / GiB, 68.08, 0.05 * 68.08);
  EXPECT_NEAR(f86.total() - bf6.total(), (68.08 - 60.55) * GiB, 0.15 * (68.08 - 60.55) * GiB);
}

}  // namespace
}  // namespace moe::train
