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
#include <random>

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

// The emulation of the GPU's BF16 attention (Options::bf16_attention) against the exact CPU op, with the bounds
// CudaTrainMoeOps.GemmAttentionMatchesCpu derives for the GPU (u = 2^-9: 4u forward, 8u backward), and a floor:
// the rounding must show.
TEST(TinyTrainBf16, EmulatedBf16AttentionWithinItsBound) {
  MlaDims d;
  d.t = 24, d.heads = 3, d.dn = 16, d.dr = 8, d.dv = 16, d.scale = 1.0 / std::sqrt(24.0);
  const int64_t b = 2, n = b * d.t, H = d.heads, P = b * H * d.t * d.t;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  auto randn = [&](int64_t count) {
    std::vector<float> v(static_cast<size_t>(count));
    for (float& x : v) x = nd(rng);
    return v;
  };
  const auto q = randn(n * H * 24), kv = randn(n * H * 32), kr = randn(n * 8), dout = randn(n * H * 16);
  auto rel = [](const std::vector<float>& a, const std::vector<float>& w) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) num += (double(a[i]) - w[i]) * (double(a[i]) - w[i]), den += double(w[i]) * w[i];
    return std::sqrt(num / den);
  };
  struct Out {
    std::vector<float> out, probs, dq, dkv, dkr;
  };
  auto run = [&](Compute& c) {
    Out o{std::vector<float>(size_t(n * H * 16)), std::vector<float>(size_t(P)), std::vector<float>(q.size()),
          std::vector<float>(kv.size()), std::vector<float>(kr.size())};
    c.attention_forward(o.out.data(), o.probs.data(), q.data(), kv.data(), kr.data(), d, b);
    c.attention_backward(o.dq.data(), o.dkv.data(), o.dkr.data(), dout.data(), o.probs.data(), q.data(), kv.data(),
                         kr.data(), d, b);
    return o;
  };
  CpuCompute exact;
  test::Bf16Emulated plain, half(test::Bf16Emulated::Options{0, true});
  const Out e = run(exact), p = run(plain), h = run(half);
  EXPECT_EQ(p.out, e.out);  // without the option: the CPU op itself
  const double u = std::ldexp(1.0, -9);
  const double err[] = {rel(h.out, e.out), rel(h.probs, e.probs), rel(h.dq, e.dq), rel(h.dkv, e.dkv), rel(h.dkr, e.dkr)};
  for (int i = 0; i < 5; ++i) {
    EXPECT_LT(err[i], (i < 2 ? 4 : 8) * u) << i;
    EXPECT_GT(err[i], 1e-2 * u) << i;
  }
  std::printf("emulated BF16 attention vs exact: out %.3g probs %.3g dq %.3g dkv %.3g dk_rope %.3g\n", err[0], err[1],
              err[2], err[3], err[4]);
}

}  // namespace
}  // namespace moe::train
