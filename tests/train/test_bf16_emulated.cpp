// The BF16 mixed-precision step's error budget, on the CPU (train/bf16_emulated.h): three steps of
// tests/data/tiny-train with every GEMM operand rounded to BF16, against the float64 reference.
// Measured (this fixture): step-1 gradients up to 1.4e-2 relative L2 (layer 2's q_a_layernorm weight: a norm
// weight's gradient is a sum over tokens with much cancellation, which magnifies the operands' 2^-9 rounding),
// losses up to 2.1e-3 relative by step 3 (AdamW's first steps move every weight by about +-lr whatever the size
// of its gradient, so rounding-sized gradient differences become lr-sized weight differences). So BF16 GEMMs by
// themselves do not meet issue 11's 1e-2 / 1e-3 on this fixture; the bounds here (3e-2, 5e-3) are the measured
// figures with about 2x margin, and the GPU step is held to them against the reference and, much tighter, to
// this emulation (tests/train_cuda).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "io/safetensors.h"
#include "train/bf16_emulated.h"
#include "train/train_steps.h"

namespace moe::train {
namespace {

TEST(TinyTrainBf16, EmulatedBf16GemmsErrorBudget) {
  EXPECT_EQ(test::round_bf16(1.0f + 1.0f / 256), 1.0f);             // a tie (half of 2^-7) rounds to even
  EXPECT_EQ(test::round_bf16(1.0f + 3.0f / 256), 1.0f + 1.0f / 64);  // and up to the even neighbour
  const std::string dir = "tests/data/tiny-train";
  TrainModel model = TrainModel::load(dir + "/model");
  const TrainSpec spec = TrainSpec::load(dir + "/train.json");
  test::Bf16Emulated bf16;
  model.compute = &bf16;
  const TrainStepsResult result = run_train_steps(model, spec);
  const SafetensorsFile ref(dir + "/train-reference.safetensors");
  double worst = 0;
  std::string worst_name;
  for (const auto& [name, grad] : result.step1_grads) {
    const TensorView want = ref.view(*ref.find("grad." + name));
    double num = 0, den = 0;
    for (int64_t i = 0; i < want.numel(); ++i) {
      const double d = double(grad[size_t(i)]) - double(want.as<const float>()[i]);
      num += d * d, den += double(want.as<const float>()[i]) * double(want.as<const float>()[i]);
    }
    const double err = std::sqrt(num / den);
    EXPECT_LT(err, 3e-2) << name;
    if (err > worst) worst = err, worst_name = name;
  }
  EXPECT_GT(worst, 1e-4) << "the rounding must show: otherwise this test checks nothing";
  std::ifstream in(dir + "/train.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  for (size_t s = 0; s < result.steps.size(); ++s) {
    const double got = result.steps[s].parts.loss, want = j["steps"][s]["loss"].get<double>();
    const double rel = std::abs(got - want) / std::abs(want);
    EXPECT_LT(rel, 5e-3) << "step " << s + 1;
    std::printf("emulated BF16 GEMMs: step %zu loss %.9g vs %.9g (%.3g relative)\n", s + 1, got, want, rel);
  }
  std::printf("emulated BF16 GEMMs: max step-1 gradient error %.3g (%s)\n", worst, worst_name.c_str());
}

}  // namespace
}  // namespace moe::train
