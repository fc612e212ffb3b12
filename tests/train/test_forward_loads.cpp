// forward_loss's expert loads (what `moe train` reports on validation batches as val_maxvio): the same counts as
// forward_backward's on the same batch (the trusted path that the step's maxvio and the bias update use), every
// token routed to exactly top-k experts of each MoE layer, and no gradient touched.
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "train/model.h"

namespace moe::train {
namespace {

TEST(ForwardLoads, ForwardLossReportsTheStepsLoads) {
  TrainModel model = TrainModel::load("tests/data/tiny-train/model");
  const int64_t b = 3, t = 11;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> id(0, int32_t(model.config.vocab_size) - 1);
  std::vector<int32_t> ids(size_t(b * t));
  for (auto& x : ids) x = id(rng);
  const Objective obj{0.3, 1e-3};

  model.zero_grad();
  ExpertLoads eval;
  const LossParts p = forward_loss(model, ids, b, t, obj, nullptr, &eval);
  for (const auto& q : model.params)
    for (float g : q->g) ASSERT_EQ(g, 0.0f) << q->name << ": forward_loss touched a gradient";

  ExpertLoads step;
  const LossParts s = forward_backward(model, ids, b, t, obj, &step);
  EXPECT_EQ(p.loss, s.loss);
  ASSERT_FALSE(eval.empty());
  EXPECT_EQ(eval, step);
  // The MTP module routes its b * (t - 2) positions (positions 0..t-3: the token after next exists);
  // the main layers every token. Each routed token goes to num_experts_per_tok experts.
  const int64_t k = model.config.num_experts_per_tok;
  for (const auto& [gate, load] : eval) {
    ASSERT_EQ(int64_t(load.size()), model.config.n_routed_experts) << gate;
    const int64_t total = std::accumulate(load.begin(), load.end(), int64_t(0));
    EXPECT_TRUE(total == b * t * k || total == b * (t - 2) * k) << gate << ": " << total;
  }
}

}  // namespace
}  // namespace moe::train
