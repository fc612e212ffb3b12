// Gradient accumulation and the batch-size ramp. Accumulating k micro-batches (forward_backward adds, then the
// sum is scaled by 1/k) must give the whole batch's gradient: the forward of a row does not depend on the other
// rows, and every loss scale (1/rows for the CEs, alpha/(t b) for the balance loss) differs by the exact factor k,
// so the only difference is where float32 rounds: a parameter's gradient is one double sum over all rows rounded
// once, against k rounded partial sums added in float32: a few ulps (2^-24 = 6e-8) of the partial sums.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "train/batch_schedule.h"
#include "train/model.h"
#include "train/optimizer.h"

namespace moe::train {
namespace {

TEST(BatchSchedule, RampsLinearlyInTokensByMicroBatches) {
  BatchSchedule s;
  s.batch = 8, s.micro = 2, s.ramp_start = 2, s.ramp_tokens = 100, s.seq_len = 10;
  // 2 + floor(6 c / 100) rounded down to a multiple of 2
  EXPECT_EQ(s.at(0), 2);
  EXPECT_EQ(s.at(33), 2);   // 2 + 1 -> 2
  EXPECT_EQ(s.at(34), 4);   // 2 + 2
  EXPECT_EQ(s.at(99), 6);   // 2 + 5 -> 6
  EXPECT_EQ(s.at(100), 8);  // the ramp is over
  EXPECT_EQ(s.at(1000), 8);
  // steps: at(0)=2 -> 20 tokens, at(20)=2 -> 40, at(40)=4 -> 80, at(80)=6 -> 140, then 8 a step
  EXPECT_EQ(s.tokens_after(0), 0);
  EXPECT_EQ(s.tokens_after(3), 80);
  EXPECT_EQ(s.tokens_after(4), 140);
  EXPECT_EQ(s.tokens_after(5), 220);
  s.ramp_start = 0;  // no ramp
  EXPECT_EQ(s.at(0), 8);
  EXPECT_EQ(s.tokens_after(3), 240);
}

TEST(BatchSchedule, BadRecipesNameTheFlag) {
  BatchSchedule s;
  s.batch = 6, s.micro = 4;
  try {
    s.check();
    FAIL() << "a batch that is not a multiple of the micro-batch was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--micro-batch"), std::string::npos) << e.what();
  }
  s.micro = 2, s.ramp_start = 3, s.ramp_tokens = 10;
  EXPECT_THROW(s.check(), Error);  // the ramp's start is not a multiple of the micro-batch
  s.ramp_start = 2, s.ramp_tokens = 0;
  EXPECT_THROW(s.check(), Error);  // a ramp over no tokens
  s.ramp_tokens = 10;
  EXPECT_NO_THROW(s.check());
}

std::vector<std::vector<float>> grads(const TrainModel& m) {
  std::vector<std::vector<float>> out;
  for (const auto& p : m.params) out.push_back(p->g);
  return out;
}

TEST(GradAccumulation, MicroBatchesEqualTheWholeBatch) {
  TrainModel model = TrainModel::load("tests/data/tiny-train/model");
  const int64_t b = 4, t = 12;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> id(0, int32_t(model.config.vocab_size) - 1);
  std::vector<int32_t> ids(size_t(b * t));
  for (auto& x : ids) x = id(rng);
  const Objective obj{0.3, 1e-2};  // a balance loss large enough to matter in the gradients

  model.zero_grad();
  ExpertLoads whole_loads;
  const LossParts whole = forward_backward(model, ids, b, t, obj, &whole_loads);
  const auto want = grads(model);

  for (int64_t k : {2, 4}) {
    model.zero_grad();
    LossParts acc;
    ExpertLoads loads;
    const int64_t mb = b / k;
    for (int64_t i = 0; i < k; ++i) {
      const std::vector<int32_t> part(ids.begin() + i * mb * t, ids.begin() + (i + 1) * mb * t);
      ExpertLoads part_loads;
      const LossParts p = forward_backward(model, part, mb, t, obj, &part_loads);
      acc.loss += p.loss / double(k), acc.main_ce += p.main_ce / double(k), acc.mtp_ce += p.mtp_ce / double(k);
      acc.seq_aux += p.seq_aux / double(k);
      for (const auto& [gate, load] : part_loads) {
        auto& sum = loads[gate];
        sum.resize(load.size(), 0);
        for (size_t e = 0; e < load.size(); ++e) sum[e] += load[e];
      }
    }
    scale_gradients(model, 1.0 / double(k));
    // The parts are double sums of the same float terms, regrouped: equal to ~1e-15.
    EXPECT_NEAR(acc.loss, whole.loss, 1e-12 * whole.loss) << k;
    EXPECT_NEAR(acc.main_ce, whole.main_ce, 1e-12 * whole.main_ce) << k;
    EXPECT_NEAR(acc.mtp_ce, whole.mtp_ce, 1e-12 * whole.mtp_ce) << k;
    EXPECT_NEAR(acc.seq_aux, whole.seq_aux, 1e-12 * whole.seq_aux) << k;
    EXPECT_EQ(loads, whole_loads) << k;  // counts: exact
    const auto got = grads(model);
    double worst = 0;
    size_t nonzero = 0;
    for (size_t p = 0; p < got.size(); ++p) {
      double num = 0, den = 0;
      for (size_t i = 0; i < got[p].size(); ++i) {
        num += std::pow(double(got[p][i]) - double(want[p][i]), 2);
        den += double(want[p][i]) * double(want[p][i]);
      }
      if (den == 0) {  // an expert no token chose: no gradient either way
        EXPECT_EQ(num, 0) << model.params[p]->name;
        continue;
      }
      ++nonzero;
      const double rel = std::sqrt(num / den);
      // k float32 partial sums and k-1 float32 additions: a few ulps (6e-8) relative, more where the
      // micro-batches' parts nearly cancel; 1e-5 is 150 ulps.
      EXPECT_LT(rel, 1e-5) << model.params[p]->name << " k=" << k;
      worst = std::max(worst, rel);
    }
    EXPECT_GT(nonzero, got.size() / 2);
    std::printf("k=%lld: worst relative L2 gradient difference %.3g over %zu non-zero tensors\n", (long long)k, worst,
                nonzero);
  }
}

}  // namespace
}  // namespace moe::train
