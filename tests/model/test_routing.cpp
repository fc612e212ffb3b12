// DeepSeekMoE routing against a plain host oracle written from MODEL.md independently of the backend code:
// V3 sigmoid + correction bias + group-limited choice, V2 softmax greedy and group-limited greedy.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include "backend/backend.h"

namespace moe {
namespace {

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

// The oracle: one token, double precision, full sorts.
Routed oracle(const std::vector<float>& logits, const std::vector<float>& bias, const RoutingParams& p) {
  const int E = p.num_experts, per_group = E / p.n_group;
  std::vector<double> s(E), b(E);
  if (p.score == RoutingScore::Sigmoid) {
    for (int e = 0; e < E; ++e) s[e] = 1.0 / (1.0 + std::exp(-double(logits[e])));
  } else {
    double z = 0;
    for (int e = 0; e < E; ++e) z += std::exp(double(logits[e]));
    for (int e = 0; e < E; ++e) s[e] = std::exp(double(logits[e])) / z;
  }
  for (int e = 0; e < E; ++e) b[e] = s[e] + (bias.empty() ? 0.0 : bias[e]);
  std::set<int> allowed_groups;
  if (p.method == RoutingMethod::Greedy) {
    for (int g = 0; g < p.n_group; ++g) allowed_groups.insert(g);
  } else {
    std::vector<std::pair<double, int>> groups;
    for (int g = 0; g < p.n_group; ++g) {
      std::vector<double> m(b.begin() + g * per_group, b.begin() + (g + 1) * per_group);
      std::sort(m.rbegin(), m.rend());
      groups.push_back({p.method == RoutingMethod::NoauxTc ? m[0] + m[1] : m[0], -g});
    }
    std::sort(groups.rbegin(), groups.rend());
    for (int i = 0; i < p.topk_group; ++i) allowed_groups.insert(-groups[i].second);
  }
  std::vector<std::pair<double, int>> cand;
  for (int e = 0; e < E; ++e)
    if (allowed_groups.count(e / per_group)) cand.push_back({b[e], -e});
  std::sort(cand.rbegin(), cand.rend());
  Routed r;
  double sum = 0;
  for (int j = 0; j < p.top_k; ++j) sum += s[-cand[j].second];
  for (int j = 0; j < p.top_k; ++j) {
    const int e = -cand[j].second;
    r.ids.push_back(e);
    r.weights.push_back(float((p.norm_topk_prob ? s[e] / (sum + 1e-20) : s[e]) * p.routed_scaling_factor));
  }
  return r;
}

// Runs the CPU backend's router on T tokens.
std::vector<Routed> route(const std::vector<std::vector<float>>& logits, const std::vector<float>& bias, const RoutingParams& p) {
  auto backend = make_cpu_backend();
  const int64_t T = int64_t(logits.size()), E = p.num_experts;
  Tensor l = Tensor::host(DType::F32, {T, E}), ids = Tensor::host(DType::I32, {T, p.top_k}),
         w = Tensor::host(DType::F32, {T, p.top_k}), b;
  for (int64_t t = 0; t < T; ++t) std::copy(logits[t].begin(), logits[t].end(), l.as<float>() + t * E);
  if (!bias.empty()) {
    b = Tensor::host(DType::F32, {E});
    std::copy(bias.begin(), bias.end(), b.as<float>());
  }
  backend->moe_route(l, b.view(), p, ids, w);
  std::vector<Routed> out(T);
  for (int64_t t = 0; t < T; ++t)
    for (int j = 0; j < p.top_k; ++j) {
      out[t].ids.push_back(ids.as<int32_t>()[t * p.top_k + j]);
      out[t].weights.push_back(w.as<float>()[t * p.top_k + j]);
    }
  return out;
}

// Compares as sets of (expert, weight): the order of the chosen experts does not matter to the MoE sum.
void expect_same(const Routed& got, const Routed& want) {
  std::vector<std::pair<int32_t, float>> g, w;
  for (size_t j = 0; j < got.ids.size(); ++j) g.push_back({got.ids[j], got.weights[j]});
  for (size_t j = 0; j < want.ids.size(); ++j) w.push_back({want.ids[j], want.weights[j]});
  std::sort(g.begin(), g.end());
  std::sort(w.begin(), w.end());
  ASSERT_EQ(g.size(), w.size());
  for (size_t j = 0; j < g.size(); ++j) {
    EXPECT_EQ(g[j].first, w[j].first);
    EXPECT_NEAR(g[j].second, w[j].second, 1e-6 * std::max(1.0f, std::fabs(w[j].second)));  // F32 vs double
  }
}

RoutingParams v3_params() {
  RoutingParams p;
  p.score = RoutingScore::Sigmoid;
  p.method = RoutingMethod::NoauxTc;
  p.num_experts = 16, p.top_k = 4, p.n_group = 4, p.topk_group = 2;
  p.norm_topk_prob = true, p.routed_scaling_factor = 2.5f;
  return p;
}

TEST(Routing, GroupMaskExcludesTheBestExpertOfALosingGroup) {
  // Group 0 holds the single best expert (0) but its second best is poor; groups 1 and 2 have two good ones.
  std::vector<float> logits(16, -4.0f);
  logits[0] = 4.0f;                  // group 0: 4.0 + -4.0
  logits[4] = 2.0f, logits[5] = 2.0f;  // group 1: 2 + 2
  logits[8] = 1.5f, logits[9] = 1.5f;  // group 2: 1.5 + 1.5
  const auto got = route({logits}, {}, v3_params());
  const std::set<int32_t> chosen(got[0].ids.begin(), got[0].ids.end());
  EXPECT_EQ(chosen, (std::set<int32_t>{4, 5, 8, 9}));
  EXPECT_EQ(chosen.count(0), 0u);
  expect_same(got[0], oracle(logits, {}, v3_params()));
}

TEST(Routing, BiasChangesChoiceButNotWeights) {
  std::vector<float> logits(16, -3.0f), bias(16, 0.0f);
  for (int e = 0; e < 8; ++e) logits[e] = 1.0f - 0.1f * float(e);
  const RoutingParams p = v3_params();
  const auto plain = route({logits}, {}, p);
  // A large bias on expert 6 (group 1) makes it chosen; its weight still comes from its unbiased score.
  bias[6] = 0.5f;
  const auto biased = route({logits}, bias, p);
  EXPECT_NE(std::find(biased[0].ids.begin(), biased[0].ids.end(), 6), biased[0].ids.end());
  EXPECT_EQ(std::find(plain[0].ids.begin(), plain[0].ids.end(), 6), plain[0].ids.end());
  double sum = 0;
  for (int32_t e : biased[0].ids) sum += 1.0 / (1.0 + std::exp(-double(logits[e])));
  for (size_t j = 0; j < biased[0].ids.size(); ++j) {
    const double s = 1.0 / (1.0 + std::exp(-double(logits[biased[0].ids[j]])));
    EXPECT_NEAR(biased[0].weights[j], s / sum * 2.5, 1e-6);
  }
  expect_same(biased[0], oracle(logits, bias, p));
}

TEST(Routing, RandomTokensMatchOracleForEveryMethod) {
  std::mt19937 rng(12345);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  struct Case { RoutingScore score; RoutingMethod method; int E, k, groups, topk_groups; bool norm; float scale; bool bias; };
  const Case cases[] = {
      {RoutingScore::Sigmoid, RoutingMethod::NoauxTc, 256, 8, 8, 4, true, 2.5f, true},   // DeepSeek-V3
      {RoutingScore::Sigmoid, RoutingMethod::NoauxTc, 64, 6, 1, 1, true, 2.446f, true},  // Moonlight
      {RoutingScore::Softmax, RoutingMethod::Greedy, 64, 6, 1, 1, false, 1.0f, false},   // V2-Lite
      {RoutingScore::Softmax, RoutingMethod::GroupLimitedGreedy, 160, 6, 8, 3, false, 16.0f, false},  // V2
  };
  for (const Case& c : cases) {
    RoutingParams p;
    p.score = c.score, p.method = c.method, p.num_experts = c.E, p.top_k = c.k, p.n_group = c.groups;
    p.topk_group = c.topk_groups, p.norm_topk_prob = c.norm, p.routed_scaling_factor = c.scale;
    std::vector<std::vector<float>> logits(64, std::vector<float>(c.E));
    for (auto& row : logits)
      for (auto& v : row) v = normal(rng);
    std::vector<float> bias;
    if (c.bias)
      for (int e = 0; e < c.E; ++e) bias.push_back(0.05f * normal(rng));
    const auto got = route(logits, bias, p);
    for (size_t t = 0; t < logits.size(); ++t) expect_same(got[t], oracle(logits[t], bias, p));
  }
}

// Outputs wider than top_k (Backend::shared_expert_slots): the first top_k columns as with [T, top_k]
// outputs, then the shared experts as routed ones, ids E, E + 1, .. with weight exactly 1.
TEST(Routing, ColumnsPastTopKNameTheSharedExperts) {
  const RoutingParams p = v3_params();
  const int64_t T = 3, E = p.num_experts, K = p.top_k, S = 2;
  std::mt19937 rng(7);
  std::normal_distribution<float> n(0.0f, 2.0f);
  Tensor l = Tensor::host(DType::F32, {T, E}), b = Tensor::host(DType::F32, {E});
  for (int64_t i = 0; i < T * E; ++i) l.as<float>()[i] = n(rng);
  for (int64_t e = 0; e < E; ++e) b.as<float>()[e] = 0.05f * n(rng);
  auto backend = make_cpu_backend();
  Tensor ids = Tensor::host(DType::I32, {T, K}), w = Tensor::host(DType::F32, {T, K});
  Tensor ids2 = Tensor::host(DType::I32, {T, K + S}), w2 = Tensor::host(DType::F32, {T, K + S});
  backend->moe_route(l, b.view(), p, ids, w);
  backend->moe_route(l, b.view(), p, ids2, w2);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < K; ++j) {
      EXPECT_EQ(ids2.as<int32_t>()[t * (K + S) + j], ids.as<int32_t>()[t * K + j]);
      EXPECT_EQ(w2.as<float>()[t * (K + S) + j], w.as<float>()[t * K + j]);
    }
    for (int64_t j = 0; j < S; ++j) {
      EXPECT_EQ(ids2.as<int32_t>()[t * (K + S) + K + j], int32_t(E + j));
      EXPECT_EQ(w2.as<float>()[t * (K + S) + K + j], 1.0f);
    }
  }
  Tensor narrow = Tensor::host(DType::I32, {T, K - 1}), wn = Tensor::host(DType::F32, {T, K - 1});
  try {
    backend->moe_route(l, b.view(), p, narrow, wn);
    ADD_FAILURE() << "outputs narrower than top_k were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("moe_route: outputs of"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moe
