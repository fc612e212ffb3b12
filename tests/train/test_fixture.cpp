// The trainer against tests/data/tiny-train (HF transformers in float64, ../shared/tools/gen_train_fixture.py):
// every step-1 gradient, the expert loads, three steps' losses and every parameter and correction bias after
// three AdamW steps. Tolerances are the issue's: 1e-4 relative L2 for gradients (the trainer keeps float32
// activations, whose rounding through ~40 ops reaches ~1e-6 relative; 1e-4 leaves room for near-cancelling
// tensors), 1e-5 relative for losses and parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "io/safetensors.h"
#include "train/train_steps.h"

namespace moe::train {
namespace {

const std::string kDir = "tests/data/tiny-train";

double rel_l2(const float* got, const float* want, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (double(got[i]) - double(want[i])) * (double(got[i]) - double(want[i]));
    den += double(want[i]) * double(want[i]);
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

struct Fixture {
  TrainModel model = TrainModel::load(kDir + "/model");
  TrainSpec spec = TrainSpec::load(kDir + "/train.json");
  SafetensorsFile ref{kDir + "/train-reference.safetensors"};
  TrainStepsResult result;
  Fixture() {
    spec.check_model(kDir + "/model", model.config);
    result = run_train_steps(model, spec);
  }
};

Fixture& fixture() {
  static Fixture f;  // three steps of the tiny model: run once for all the checks below
  return f;
}

TEST(TinyTrain, Step1GradientsMatchReference) {
  Fixture& f = fixture();
  double worst = 0;
  std::string worst_name;
  size_t checked = 0;
  for (const auto& [name, grad] : f.result.step1_grads) {
    const SafetensorsEntry* e = f.ref.find("grad." + name);
    ASSERT_NE(e, nullptr) << "the reference has no gradient for " << name;
    const TensorView want = f.ref.view(*e);
    ASSERT_EQ(want.numel(), int64_t(grad.size())) << name;
    const double err = rel_l2(grad.data(), want.as<const float>(), want.numel());
    EXPECT_LT(err, 1e-4) << name;
    if (err > worst) worst = err, worst_name = name;
    ++checked;
  }
  size_t ref_grads = 0;
  for (const auto& e : f.ref.entries()) ref_grads += e.name.rfind("grad.", 0) == 0;
  EXPECT_EQ(checked, ref_grads) << "every reference gradient has a parameter";
  std::printf("max relative L2 gradient error %.3g (%s) over %zu tensors\n", worst, worst_name.c_str(), checked);
  RecordProperty("max_grad_rel_l2", std::to_string(worst));
}

TEST(TinyTrain, Step1ExpertLoadsExact) {
  Fixture& f = fixture();
  size_t ref_loads = 0;
  for (const auto& e : f.ref.entries()) ref_loads += e.name.rfind("load.", 0) == 0;
  EXPECT_EQ(f.result.step1_loads.size(), ref_loads);
  for (const auto& [gate, load] : f.result.step1_loads) {
    const SafetensorsEntry* e = f.ref.find("load." + gate);
    ASSERT_NE(e, nullptr) << gate;
    const TensorView want = f.ref.view(*e);
    ASSERT_EQ(want.numel(), int64_t(load.size()));
    for (size_t i = 0; i < load.size(); ++i) EXPECT_EQ(double(load[i]), double(want.as<const float>()[i])) << gate << " " << i;
  }
}

TEST(TinyTrain, ThreeStepsLossesMatchReference) {
  Fixture& f = fixture();
  std::ifstream in(kDir + "/train.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  ASSERT_EQ(f.result.steps.size(), j["steps"].size());
  double worst = 0;
  for (size_t s = 0; s < f.result.steps.size(); ++s) {
    const StepReport& r = f.result.steps[s];
    const nlohmann::json& w = j["steps"][s];
    const std::pair<const char*, double> got[] = {{"loss", r.parts.loss},         {"main_ce", r.parts.main_ce},
                                                  {"mtp_ce", r.parts.mtp_ce},     {"seq_aux", r.parts.seq_aux},
                                                  {"grad_norm", r.stats.grad_norm}, {"clip_scale", r.stats.clip_scale}};
    for (const auto& [key, value] : got) {
      const double want = w[key].get<double>();
      const double rel = std::abs(value - want) / std::abs(want);
      EXPECT_LT(rel, 1e-5) << "step " << s + 1 << " " << key << ": " << value << " vs " << want;
      worst = std::max(worst, rel);
    }
  }
  std::printf("max relative loss/part error over 3 steps %.3g\n", worst);
  RecordProperty("max_loss_rel", std::to_string(worst));
}

TEST(TinyTrain, ParametersAfterThreeStepsMatchReference) {
  Fixture& f = fixture();
  double worst = 0;
  std::string worst_name;
  size_t checked = 0;
  auto check = [&](const std::string& name, const std::vector<float>& value) {
    const SafetensorsEntry* e = f.ref.find("after3." + name);
    ASSERT_NE(e, nullptr) << name;
    const TensorView want = f.ref.view(*e);
    ASSERT_EQ(want.numel(), int64_t(value.size())) << name;
    const double err = rel_l2(value.data(), want.as<const float>(), want.numel());
    EXPECT_LT(err, 1e-5) << name;
    if (err > worst) worst = err, worst_name = name;
    ++checked;
  };
  for (const auto& p : f.model.params) check(p->name, p->w);
  for (const auto& b : f.model.biases) check(b->name, b->value);
  size_t ref_after = 0;
  for (const auto& e : f.ref.entries()) ref_after += e.name.rfind("after3.", 0) == 0;
  EXPECT_EQ(checked, ref_after);
  std::printf("max relative L2 parameter error after 3 steps %.3g (%s)\n", worst, worst_name.c_str());
  RecordProperty("max_after3_rel_l2", std::to_string(worst));
}

}  // namespace
}  // namespace moe::train
