// The device-resident step (DeviceTrainer) against the CPU trainer.
//  - tiny-train fixture, FP32 GEMMs (no TF32): three steps' losses within 1e-5 relative and every step-1 gradient
//    within 1e-4 relative L2 of the CPU trainer's FP32 reference (train-reference.safetensors, train.json): the
//    CPU trainer's own bounds (FP32 rounding through ~40 ops).
//  - tiny-train, BF16 GEMMs: against the CPU step with the operands rounded at the same points
//    (tests/train/bf16_emulated.h) within v1's derived bounds (gradients 5e-3, losses 3e-4; test_train_cuda_step.cpp
//    says why), and against the FP32 reference within the BF16 budget (3e-2, 5e-3).
//  - a random small model (bench/configs/train-small.json: hidden 256, MoE, MTP; sequences of 128), fresh random
//    tokens seeded from the clock (printed): five whole steps (forward, backward, clipping, AdamW, bias update) on
//    the GPU and on the CPU trainer; losses within 1e-3 relative in BF16 (issue 11), 1e-4 in FP32 (five AdamW
//    steps of lr 1e-3 move the weights by ~5e-3 each, and FP32 rounding differences of the gradients change
//    the near-zero ones' update directions: well above 1e-5, well below 1e-4 in the losses).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <limits>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/thread_pool.h"
#include "io/safetensors.h"
#include "train/bf16_emulated.h"
#include "train/cuda/device_trainer.h"
#include "train/optimizer.h"
#include "train/train_steps.h"
#include "train_cuda/util.h"

namespace moe::train::test {
namespace {

using cuda::DeviceTrainer;
using cuda::GemmPrecision;

const std::string kDir = "tests/data/tiny-train";

struct Got {
  std::vector<std::pair<std::string, std::vector<float>>> grads;
  std::vector<double> losses;
};

Got run_fixture(DeviceStep* device, Compute* compute) {
  TrainModel model = TrainModel::load(kDir + "/model");
  const TrainSpec spec = TrainSpec::load(kDir + "/train.json");
  spec.check_model(kDir + "/model", model.config);
  model.device = device;
  model.compute = compute;
  const TrainStepsResult r = run_train_steps(model, spec);
  Got g;
  g.grads = r.step1_grads;
  for (const auto& s : r.steps) g.losses.push_back(s.parts.loss);
  return g;
}

Got reference() {
  Got w;
  const SafetensorsFile ref(kDir + "/train-reference.safetensors");
  for (const auto& e : ref.entries())
    if (e.name.rfind("grad.", 0) == 0) {
      const TensorView v = ref.view(e);
      w.grads.emplace_back(e.name.substr(5), std::vector<float>(v.as<const float>(), v.as<const float>() + v.numel()));
    }
  std::ifstream in(kDir + "/train.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  for (const auto& s : j["steps"]) w.losses.push_back(s["loss"].get<double>());
  return w;
}

void compare(const char* what, const Got& got, const Got& want, double grad_tol, double loss_tol) {
  double worst = 0;
  std::string worst_name;
  size_t checked = 0;
  for (const auto& [name, w] : want.grads) {
    const auto it = std::find_if(got.grads.begin(), got.grads.end(), [&](const auto& g) { return g.first == name; });
    ASSERT_NE(it, got.grads.end()) << name;
    ASSERT_EQ(it->second.size(), w.size()) << name;
    const double err = rel_l2(it->second, w);
    EXPECT_LT(err, grad_tol) << what << ": " << name;
    if (err > worst) worst = err, worst_name = name;
    ++checked;
  }
  EXPECT_GT(checked, size_t(10));
  ASSERT_EQ(got.losses.size(), want.losses.size());
  double worst_loss = 0;
  for (size_t s = 0; s < got.losses.size(); ++s) {
    const double rel = std::abs(got.losses[s] - want.losses[s]) / std::abs(want.losses[s]);
    EXPECT_LT(rel, loss_tol) << what << ": step " << s + 1 << " loss " << got.losses[s] << " vs " << want.losses[s];
    worst_loss = std::max(worst_loss, rel);
  }
  std::printf("%s: max step-1 gradient error %.3g (%s) over %zu tensors, max loss error over %zu steps %.3g\n", what,
              worst, worst_name.c_str(), checked, got.losses.size(), worst_loss);
}

TEST(CudaDeviceStep, TinyTrainFp32MatchesReference) {
  SKIP_WITHOUT_GPU();
  DeviceTrainer gpu(GemmPrecision::Fp32);
  compare("device fp32 vs reference", run_fixture(&gpu, nullptr), reference(), 1e-4, 1e-5);
}

TEST(CudaDeviceStep, TinyTrainBf16MatchesCpuWithTheSameRounding) {
  SKIP_WITHOUT_GPU();
  DeviceTrainer gpu(GemmPrecision::Bf16);
  Bf16Emulated cpu;
  const Got g = run_fixture(&gpu, nullptr), c = run_fixture(nullptr, &cpu);
  compare("device bf16 vs cpu bf16-emulated", g, c, 5e-3, 3e-4);
  compare("device bf16 vs reference", g, reference(), 3e-2, 5e-3);
}

// Five whole steps of a fresh train-small model on random tokens, GPU vs the CPU trainer; under BF16 GEMMs the CPU
// rounds the GEMM operands to BF16 at the same points (Bf16Emulated: the heads' and the attention's too under the
// fast settings), so the two differ by summation orders (and flash's online softmax) only.
// Bounds under BF16: step 1 (forward and backward from the same weights) by the roundings' effect on one loss:
// a logit's error is ~2u (u = 2^-9) of its size, random-signed over 512 tokens, so the mean loss moves by
// ~2u |z| / sqrt(512) ~ 1e-4 relative at most here (kBf16FirstStep; measured 2e-6 to 7e-5). Later steps drift
// apart faster than that: Adam's first update is lr sign(g) for every weight, so each weight whose gradient lies
// within the roundings' noise of zero moves by +lr on one side and -lr on the other (lr = 1e-3, 5 % of the
// weights' scale), and the next losses carry it: measured 2e-4 to 1.07e-3 of the loss at step 5 on an H200
// (2026-12-03, eight runs, against the FP32 CPU trainer and against this emulation alike), held to kBf16Steps.
constexpr double kBf16FirstStep = 2e-4, kBf16Steps = 2e-3;
// fast: the throughput settings (train-bench's MFU runs): grouped wgmma expert GEMMs, BF16 attention and head GEMMs.
// first_tol (< 0: loss_tol) bounds step 1, before any update.
// fast_attention: the attention mode of the fast settings (Bf16, or Flash).
void five_steps(GemmPrecision p, double loss_tol, const char* what, bool bf16_moments = false, bool fast = false,
                double first_tol = -1, cuda::AttnPrecision fast_attention = cuda::AttnPrecision::Bf16) {
  const uint64_t seed = uint64_t(std::chrono::system_clock::now().time_since_epoch().count());
  std::printf("%s: seed %llu\n", what, static_cast<unsigned long long>(seed));
  const std::string path = "bench/configs/train-small.json";
  std::ifstream in(path);
  const ModelConfig cfg = ModelConfig::from_json(nlohmann::json::parse(in), path);
  const int64_t b = 4, t = 128;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> id(1, int32_t(cfg.vocab_size) - 1);
  std::vector<std::vector<int32_t>> batches(5, std::vector<int32_t>(size_t(b * t)));
  for (auto& ids : batches)
    for (auto& x : ids) x = id(rng);
  const Objective obj{0.3, 1e-3};
  AdamW adamw;
  adamw.bf16_moments = bf16_moments;
  ThreadPool pool(int(std::max(1u, std::thread::hardware_concurrency())));  // the CPU trainer's GEMM threads
  Bf16Emulated emulated(Bf16Emulated::Options{fast ? cfg.vocab_size : 0, fast});
  auto run = [&](DeviceStep* device) {
    TrainModel m = TrainModel::init(cfg, path, seed, 0.02);
    m.device = device;
    m.pool = &pool;
    if (!device && p == GemmPrecision::Bf16) m.compute = &emulated;
    std::vector<double> losses;
    for (int64_t s = 1; s <= 5; ++s) {
      m.zero_grad();
      ExpertLoads loads;
      losses.push_back(forward_backward(m, batches[size_t(s - 1)], b, t, obj, &loads).loss);
      adamw_step(m, adamw, 1e-3, 1.0, s);
      update_correction_biases(m, loads, 1e-3);
    }
    return losses;
  };
  DeviceTrainer gpu(p);
  gpu.set_bf16_moments(bf16_moments);
  if (fast) {
    gpu.set_grouped_experts(true);
    gpu.set_attention(fast_attention);
    gpu.set_head_fp32(false);
  }
  const std::vector<double> g = run(&gpu), c = run(nullptr);
  double worst = 0;
  for (size_t s = 0; s < c.size(); ++s) {
    const double rel = std::abs(g[s] - c[s]) / std::abs(c[s]);
    EXPECT_LT(rel, s == 0 && first_tol >= 0 ? first_tol : loss_tol) << what << ": step " << s + 1 << ": " << g[s]
                                                                   << " vs " << c[s];
    worst = std::max(worst, rel);
    std::printf("%s: step %zu loss %.9g (gpu) %.9g (cpu)\n", what, s + 1, g[s], c[s]);
  }
  std::printf("%s: max relative loss difference %.3g\n", what, worst);
}

TEST(CudaDeviceStep, RandomSmallModelFiveStepsBf16MatchCpu) {
  SKIP_WITHOUT_GPU();
  five_steps(GemmPrecision::Bf16, kBf16Steps, "train-small bf16", false, false, kBf16FirstStep);
}

// BF16 moments on both sides (the device's 2-byte arenas, the CPU's rounding emulation): the same bound.
TEST(CudaDeviceStep, RandomSmallModelFiveStepsBf16MomentsMatchCpu) {
  SKIP_WITHOUT_GPU();
  five_steps(GemmPrecision::Bf16, kBf16Steps, "train-small bf16, bf16 moments", true, false, kBf16FirstStep);
}

// The MFU settings: the attention's and the head's products on BF16 operands too: the same bounds.
TEST(CudaDeviceStep, RandomSmallModelFiveStepsFastSettingsMatchCpu) {
  SKIP_WITHOUT_GPU();
  five_steps(GemmPrecision::Bf16, kBf16Steps, "train-small bf16 moments, grouped experts, bf16 attention and head",
             true, true, kBf16FirstStep);
}

// The same with --attention flash (attention_flash.cu: train-small's (32, 16, 32) heads have a kernel): Bf16's
// roundings at the same operands (tests/train_cuda/test_train_cuda_flash.cpp), so the same argument and bound.
TEST(CudaDeviceStep, RandomSmallModelFiveStepsFlashAttentionMatchCpu) {
  SKIP_WITHOUT_GPU();
  five_steps(GemmPrecision::Bf16, kBf16Steps, "train-small bf16 moments, grouped experts, flash attention, bf16 head",
             true, true, kBf16FirstStep, cuda::AttnPrecision::Flash);
}

// The fixture under the MFU settings against the CPU's BF16 emulation rounding at the same points (the heads' and
// the attention products' operands too). The points are the same but the values rounded are not quite: the GPU's
// scores, probabilities and dS come from FP32 sums, the emulation's from double ones, so now and then one of the
// millions of P or dS roundings lands on the other side (one BF16 ulp, 2^-8 relative), and a norm weight's
// gradient (a sum over tokens with much cancellation) magnifies that: measured 5.7e-3 on layer 0's input norm
// against 3.0e-3 for the plain BF16 comparison (H200, 2026-12-02). Held to the 1e-2; losses to 3e-4.
TEST(CudaDeviceStep, TinyTrainFastSettingsMatchCpuWithTheSameRounding) {
  SKIP_WITHOUT_GPU();
  DeviceTrainer gpu(GemmPrecision::Bf16);
  gpu.set_grouped_experts(true);
  gpu.set_attention(cuda::AttnPrecision::Bf16);
  gpu.set_head_fp32(false);
  const TrainModel model = TrainModel::load(kDir + "/model");
  Bf16Emulated cpu(Bf16Emulated::Options{model.config.vocab_size, true});
  const Got g = run_fixture(&gpu, nullptr), c = run_fixture(nullptr, &cpu);
  compare("device bf16 fast settings vs cpu bf16-emulated with the same roundings", g, c, 1e-2, 3e-4);
}

TEST(CudaDeviceStep, RandomSmallModelFiveStepsFp32MatchCpu) {
  SKIP_WITHOUT_GPU();
  // Step 1 is FP32 against FP32 (measured 6e-9 on an H200, 2026-12-02): 1e-6. After it, AdamW's first updates
  // move every weight by about +-lr whatever its gradient's size, and the router's top-k turns those last-bit
  // differences into a different expert for a token now and then (discrete: one token of 512 moving to another
  // expert shifts the mean loss by ~1e-4 relative; measured 2.7e-4 at step 5 in one of the runs): 1e-3 after it.
  five_steps(GemmPrecision::Fp32, 1e-3, "train-small fp32", false, false, 1e-6);
}

// set_check_finite names where non-finite values first appear: a NaN planted in layer 1's q_b_proj shows first in
// that layer's queries (forward); the same model without the NaN passes the checks and gives the unchecked loss.
TEST(CudaDeviceStep, CheckFiniteNamesTheFirstNonFiniteTensor) {
  SKIP_WITHOUT_GPU();
  const std::string path = "bench/configs/train-small.json";
  const ModelConfig cfg = load_config(path);
  const int64_t b = 2, t = 64;
  const std::vector<int32_t> ids = random_ids(cfg.vocab_size, b * t, 21);
  const Objective obj{0.3, 1e-3};
  auto loss = [&](bool check, bool plant) {
    DeviceTrainer gpu(GemmPrecision::Bf16);
    gpu.set_check_finite(check);
    TrainModel m = TrainModel::init(cfg, path, 11, 0.02);
    if (plant) {
      bool planted = false;
      for (auto& p : m.params)
        if (p->name == "model.layers.1.self_attn.q_b_proj.weight") p->w[5] = std::numeric_limits<float>::quiet_NaN(), planted = true;
      EXPECT_TRUE(planted);
    }
    m.device = &gpu;
    m.zero_grad();
    ExpertLoads loads;
    return forward_backward(m, ids, b, t, obj, &loads).loss;
  };
  const double plain = loss(false, false), checked = loss(true, false);
  EXPECT_EQ(plain, checked);
  EXPECT_TRUE(std::isnan(loss(false, true)));  // unchecked, the NaN runs through to the loss
  try {
    loss(true, true);
    ADD_FAILURE() << "a NaN weight passed --check-finite";
  } catch (const Error& e) {
    const std::string what = e.what();
    std::printf("%s\n", what.c_str());
    EXPECT_NE(what.find("forward pass"), std::string::npos) << what;
    EXPECT_NE(what.find("L1.q"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace moe::train::test
