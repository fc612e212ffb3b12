// The step's parts on hand-made inputs: the learning-rate schedule, clipping + AdamW against the formulas
// written out in double, and the correction-bias rule.
#include <gtest/gtest.h>

#include <cmath>

#include "core/dtype.h"
#include "train/optimizer.h"

namespace moe::train {
namespace {

TEST(LrSchedule, WarmupThenCosine) {
  LrSchedule s;
  s.lr = 1.0, s.min_lr = 0.1, s.warmup_steps = 4, s.decay_start = 4, s.decay_end = 14;
  EXPECT_DOUBLE_EQ(s.at(1), 0.25);
  EXPECT_DOUBLE_EQ(s.at(4), 1.0);
  EXPECT_DOUBLE_EQ(s.at(9), 0.1 + 0.45 * (1 + std::cos(M_PI * 0.5)));  // half-way: the mean of lr and min_lr
  EXPECT_DOUBLE_EQ(s.at(14), 0.1);
  EXPECT_DOUBLE_EQ(s.at(100), 0.1);
}

TEST(LrSchedule, ConstantThenCosineAndConstant) {
  LrSchedule s;
  s.lr = 2.0, s.warmup_steps = 2, s.decay_start = 10, s.decay_end = 20;
  EXPECT_DOUBLE_EQ(s.at(1), 1.0);
  EXPECT_DOUBLE_EQ(s.at(7), 2.0);
  EXPECT_DOUBLE_EQ(s.at(10), 2.0);
  EXPECT_LT(s.at(11), 2.0);
  LrSchedule c;  // the fixture's: no warm-up, no decay
  c.lr = 1e-3;
  EXPECT_DOUBLE_EQ(c.at(1), 1e-3);
  EXPECT_DOUBLE_EQ(c.at(1000), 1e-3);
}

TrainModel two_param_model() {
  TrainModel m;
  auto add = [&](const char* name, Shape shape, std::vector<float> w, std::vector<float> g) {
    auto p = std::make_unique<Param>();
    p->name = name, p->shape = shape, p->w = w, p->g = g, p->decay = shape.rank >= 2;
    p->m.assign(w.size(), 0.f), p->v.assign(w.size(), 0.f);
    m.params.push_back(std::move(p));
  };
  add("w", {1, 2}, {0.5f, -0.25f}, {3.0f, -4.0f});  // |g| = 5 with the norm's 0
  add("norm", {1}, {1.0f}, {0.0f});
  return m;
}

TEST(AdamW, ClipsAndStepsAsWritten) {
  TrainModel m = two_param_model();
  AdamW opt;
  const double lr = 0.01;
  const StepStats st = adamw_step(m, opt, lr, 1.0, 1);
  EXPECT_DOUBLE_EQ(st.grad_norm, 5.0);
  EXPECT_DOUBLE_EQ(st.clip_scale, 1.0 / (5.0 + 1e-6));
  // Step 1: m_hat = g', v_hat = g'^2, update = g' / (|g'| + eps); decay only on the rank-2 tensor.
  const double gs[2] = {3.0 * st.clip_scale, -4.0 * st.clip_scale}, w0[2] = {0.5, -0.25};
  for (int i = 0; i < 2; ++i) {
    const double want = w0[i] * (1 - lr * 0.1) - lr * gs[i] / (std::abs(gs[i]) + 1e-8);
    EXPECT_NEAR(m.params[0]->w[size_t(i)], want, 1e-7);
  }
  EXPECT_EQ(m.params[1]->w[0], 1.0f);  // zero gradient, no decay: unchanged
  // Step 2 with the same gradient: moments 0.19 g and 0.0975 g^2 before bias correction (0.19, 0.0975).
  const float before = m.params[0]->w[0];
  adamw_step(m, opt, lr, 10.0, 2);  // no clipping now (5 < 10)
  const double mh = (0.9 * 0.1 * gs[0] + 0.1 * 3.0) / (1 - 0.81), vh = (0.95 * 0.05 * gs[0] * gs[0] + 0.05 * 9.0) / (1 - 0.9025);
  EXPECT_NEAR(m.params[0]->w[0], before * (1 - lr * 0.1) - lr * mh / (std::sqrt(vh) + 1e-8), 1e-7);
}

// BF16 moments (DeepSeek-V3's): m and v are the FP32 step's values rounded to BF16 (nearest even) when stored,
// and the update uses the stored values. Written out in double for three steps of varied gradients.
TEST(AdamW, Bf16MomentsAreRoundedWhenStoredAndUsed) {
  const size_t n = 257;
  TrainModel m, f;
  for (TrainModel* t : {&m, &f}) {
    auto p = std::make_unique<Param>();
    p->name = "w", p->shape = {1, int64_t(n)}, p->decay = true;
    for (size_t i = 0; i < n; ++i) p->w.push_back(0.01f * float(int(i % 17) - 8) + 0.003f);
    p->g.assign(n, 0.f), p->m.assign(n, 0.f), p->v.assign(n, 0.f);
    t->params.push_back(std::move(p));
  }
  AdamW opt, opt32;
  opt.bf16_moments = true;
  const double lr = 1e-2;
  std::vector<double> wm(n), mm(n, 0.0), vm(n, 0.0);
  for (size_t i = 0; i < n; ++i) wm[i] = m.params[0]->w[i];
  auto bf = [](double x) { return double(bf16_to_float(float_to_bf16(float(x)))); };
  for (int64_t step = 1; step <= 3; ++step) {
    for (size_t i = 0; i < n; ++i)  // gradients of both signs and many magnitudes, never zero
      m.params[0]->g[i] = f.params[0]->g[i] = float((double(int(i * 7 + step * 13) % 29) - 14.5) * 1e-3 * double(1 + i % 5));
    const StepStats st = adamw_step(m, opt, lr, 1e9, step);
    adamw_step(f, opt32, lr, 1e9, step);
    const double bc1 = 1 - std::pow(0.9, double(step)), bc2 = 1 - std::pow(0.95, double(step));
    size_t moved = 0;
    for (size_t i = 0; i < n; ++i) {
      const double g = double(m.params[0]->g[i]) * st.clip_scale;
      mm[i] = bf(0.9 * mm[i] + 0.1 * g);
      vm[i] = bf(0.95 * vm[i] + 0.05 * g * g);
      wm[i] = double(float(wm[i] * (1 - lr * 0.1) - lr * (mm[i] / bc1) / (std::sqrt(vm[i] / bc2) + 1e-8)));
      ASSERT_EQ(double(m.params[0]->m[i]), mm[i]) << "step " << step << " i " << i;  // exactly the BF16 value
      ASSERT_EQ(double(m.params[0]->v[i]), vm[i]) << "step " << step << " i " << i;
      ASSERT_EQ(m.params[0]->m[i], bf16_to_float(float_to_bf16(m.params[0]->m[i])));
      EXPECT_NEAR(double(m.params[0]->w[i]), wm[i], 1e-7 * std::abs(wm[i]) + 1e-9);
      // Against FP32 moments: at step 1 each m is 0.1 g rounded once, within half a BF16 ulp (7 stored mantissa
      // bits: at most 2^-8 relative).
      if (step == 1) {
        EXPECT_LE(std::abs(double(m.params[0]->m[i]) - double(f.params[0]->m[i])),
                  std::ldexp(std::abs(double(f.params[0]->m[i])), -8));
      }
      if (m.params[0]->m[i] != f.params[0]->m[i]) ++moved;
    }
    // Later, one rounding a step, decayed by beta1: the whole vector stays within a few of them.
    double num = 0, den = 0;
    for (size_t i = 0; i < n; ++i) {
      const double d = double(m.params[0]->m[i]) - double(f.params[0]->m[i]);
      num += d * d, den += double(f.params[0]->m[i]) * double(f.params[0]->m[i]);
    }
    EXPECT_LT(std::sqrt(num / den), double(step) * std::ldexp(1.0, -8));
    EXPECT_GT(moved, n / 2);  // the rounding happened (FP32 moments keep bits BF16 drops)
  }
}

TEST(CorrectionBias, MovesTowardsTheMeanLoad) {
  TrainModel m;
  auto bias = std::make_unique<CorrectionBias>();
  bias->value = {0.f, 0.f, 0.f, 0.f};
  LayerParams L;
  L.is_moe = true, L.bias = bias.get(), L.gate_name = "g";
  m.layers.push_back(L);
  m.biases.push_back(std::move(bias));
  update_correction_biases(m, {{"g", {5, 1, 3, 3}}}, 0.5);  // mean 3
  EXPECT_EQ(m.biases[0]->value, (std::vector<float>{-0.5f, 0.5f, 0.f, 0.f}));
}

}  // namespace
}  // namespace moe::train
