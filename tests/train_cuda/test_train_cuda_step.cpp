// Whole training steps with the GPU ops (CudaCompute) on tests/data/tiny-train: three AdamW steps' losses and
// every step-1 gradient.
//  - FP32 GEMMs (no TF32) against the float64 HF reference, at the CPU trainer's own bounds (1e-4 gradients,
//    1e-5 losses: FP32 rounding through ~40 ops).
//  - BF16 GEMMs against the same step on the CPU with the operands rounded at the same points
//    (tests/train/bf16_emulated.h): the two differ only by FP32 vs double accumulation of exact BF16 products
//    (the FP32 step above shows the rest of the path agrees to 1e-6) and the BF16 roundings that this flips,
//    which cancellation in reductions (norm weights, embedding rows) and AdamW's sign-like first updates
//    magnify. Measured on an H200 (slot 1, 2026-12-02): gradients 1.9e-3, losses 9.6e-5. Bounds 5e-3 and 3e-4:
//    still 3x and 7x inside the BF16 effect itself (1.4e-2, 2.1e-3 vs float64), so a GEMM that rounded at
//    other points, or not at all, fails.
//  - BF16 GEMMs against the float64 reference within the budget that BF16 rounding itself takes on this
//    fixture (measured on the CPU by tests/train/test_bf16_emulated.cpp: 1.4e-2 gradients, 2.1e-3 losses; bounds
//    3e-2, 5e-3). Issue 11's 1e-2 / 1e-3 are not met by BF16 GEMMs on this fixture, GPU or not.
#include <algorithm>
#include <fstream>

#include "io/safetensors.h"
#include "train/bf16_emulated.h"
#include "train/train_steps.h"
#include "train_cuda/util.h"

namespace moe::train::test {
namespace {

using cuda::CudaCompute;
using cuda::GemmPrecision;

const std::string kDir = "tests/data/tiny-train";

TrainStepsResult run_steps(Compute& compute) {
  TrainModel model = TrainModel::load(kDir + "/model");
  const TrainSpec spec = TrainSpec::load(kDir + "/train.json");
  spec.check_model(kDir + "/model", model.config);
  model.compute = &compute;
  return run_train_steps(model, spec);
}

struct Want {
  std::vector<std::pair<std::string, std::vector<float>>> grads;
  std::vector<double> losses;
};

Want reference() {
  Want w;
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

Want of(const TrainStepsResult& r) {
  Want w;
  w.grads = r.step1_grads;
  for (const auto& s : r.steps) w.losses.push_back(s.parts.loss);
  return w;
}

void compare(const char* what, const Want& got, const Want& want, double grad_tol, double loss_tol) {
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
  ASSERT_EQ(got.losses.size(), size_t(3));
  double worst_loss = 0;
  for (size_t s = 0; s < got.losses.size(); ++s) {
    const double rel = std::abs(got.losses[s] - want.losses[s]) / std::abs(want.losses[s]);
    EXPECT_LT(rel, loss_tol) << what << ": step " << s + 1 << " loss " << got.losses[s] << " vs " << want.losses[s];
    worst_loss = std::max(worst_loss, rel);
  }
  std::printf("%s: max step-1 gradient error %.3g (%s) over %zu tensors, max loss error over 3 steps %.3g\n", what,
              worst, worst_name.c_str(), checked, worst_loss);
}

TEST(CudaTrainStep, TinyTrainFp32MatchesReference) {
  SKIP_WITHOUT_GPU();
  CudaCompute gpu(GemmPrecision::Fp32);
  compare("gpu fp32 vs reference", of(run_steps(gpu)), reference(), 1e-4, 1e-5);
}

TEST(CudaTrainStep, TinyTrainBf16MatchesCpuWithTheSameRounding) {
  SKIP_WITHOUT_GPU();
  CudaCompute gpu(GemmPrecision::Bf16);
  Bf16Emulated cpu;
  const Want g = of(run_steps(gpu)), c = of(run_steps(cpu));
  compare("gpu bf16 vs cpu bf16-emulated", g, c, 5e-3, 3e-4);
  compare("gpu bf16 vs reference", g, reference(), 3e-2, 5e-3);
}

}  // namespace
}  // namespace moe::train::test
