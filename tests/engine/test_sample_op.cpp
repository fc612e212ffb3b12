// Backend::sample on the CPU backend (the host code behind one interface with the CUDA op) against the
// request Sampler it replaces on the device path: for the same seed the same tokens, exactly, with logit_bias,
// penalties, allowed-token masks, padding past the tokenizer's vocabulary and logprobs.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "backend/backend.h"
#include "engine/sampler.h"

namespace moe {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> random_rows(std::mt19937_64& rng, int64_t R, int64_t V) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> x(size_t(R * V));
  for (auto& v : x) v = std::round(normal(rng) * 16.0f) / 16.0f;  // a grid of 1/16: ties
  return x;
}

TEST(SampleOp, CpuBackendEqualsTheSampler) {
  auto cpu = make_cpu_backend();
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const int64_t R = 48, V = 5000;
  for (int round = 0; round < 10; ++round) {
    const auto logits = random_rows(rng, R, V);
    std::vector<SamplingParams> params(static_cast<size_t>(R));
    std::vector<std::vector<int32_t>> prompt(static_cast<size_t>(R)), output(static_cast<size_t>(R));
    std::vector<std::vector<uint32_t>> masks(static_cast<size_t>(R));
    std::vector<SampleRow> rows(static_cast<size_t>(R));
    std::vector<Sampler> old, fresh;
    for (int64_t r = 0; r < R; ++r) {
      SamplingParams& p = params[size_t(r)];
      p.temperature = r % 5 == 0 ? 0.0f : 0.3f + unit(rng);
      if (r % 3 == 0) p.top_k = 1 + int32_t(unit(rng) * 100);
      if (r % 4 == 1) p.top_p = 0.5f + 0.5f * unit(rng);
      if (r % 6 == 2) p.min_p = 0.1f * unit(rng);
      if (r % 2) p.repetition_penalty = 1.0f + unit(rng);
      if (r % 3 == 1) p.frequency_penalty = unit(rng), p.presence_penalty = unit(rng);
      p.logit_bias = {{int32_t(unit(rng) * V), 5.0f}, {int32_t(unit(rng) * V), -100.0f}, {int32_t(V + 3), 50.0f}};
      p.seed = 1000 + uint64_t(r) + uint64_t(round) * 100;
      for (int i = 0; i < 30; ++i) prompt[size_t(r)].push_back(int32_t(unit(rng) * V));
      for (int i = 0; i < 12; ++i) output[size_t(r)].push_back(int32_t(unit(rng) * V));
      old.emplace_back(p);
      fresh.emplace_back(p);
      SampleRow& s = rows[size_t(r)];
      s = sample_row(r, &params[size_t(r)]);
      s.prompt = prompt[size_t(r)];
      s.output = output[size_t(r)];
      s.top_logprobs = int32_t(r % 4) - 1;
      if (r % 2 == 0) s.vocab_limit = V - 17;
      if (r % 3 == 2) {
        masks[size_t(r)].assign(size_t((V + 31) / 32), 0u);
        for (int64_t t = 0; t < V; ++t)
          if (unit(rng) < 0.3f) masks[size_t(r)][size_t(t >> 5)] |= 1u << (t & 31);
        s.allowed = masks[size_t(r)];
      }
    }
    // The old path, as the scheduler runs it on the host: padding, logprobs, mask, Sampler::sample.
    std::vector<int32_t> want(static_cast<size_t>(R));
    std::vector<std::vector<float>> want_lp(static_cast<size_t>(R));
    for (int64_t r = 0; r < R; ++r) {
      std::vector<float> row(logits.begin() + r * V, logits.begin() + (r + 1) * V);
      for (int64_t i = std::min(rows[size_t(r)].vocab_limit, V); i < V; ++i) row[size_t(i)] = -kInf;
      want_lp[size_t(r)] = Sampler::log_softmax(row);
      if (!masks[size_t(r)].empty())
        for (int64_t i = 0; i < V; ++i)
          if (!allowed_bit(masks[size_t(r)], i)) row[size_t(i)] = -kInf;
      want[size_t(r)] = old[size_t(r)].sample(row, prompt[size_t(r)], output[size_t(r)]);
    }
    // The op, with one draw of each request's RNG.
    Tensor t = cpu->alloc(DType::F32, {R, V});
    cpu->copy_from_host(logits.data(), t);
    for (int64_t r = 0; r < R; ++r)
      rows[size_t(r)].u = params[size_t(r)].temperature > 0.0f ? fresh[size_t(r)].draw() : 0.0;
    std::vector<SampleResult> got;
    cpu->sample(t, rows, got);
    ASSERT_EQ(got.size(), size_t(R));
    for (int64_t r = 0; r < R; ++r) {
      ASSERT_EQ(got[size_t(r)].token, want[size_t(r)]) << "round " << round << " row " << r;
      const int32_t n = rows[size_t(r)].top_logprobs;
      if (n < 0) continue;
      const auto& lp = want_lp[size_t(r)];
      EXPECT_EQ(got[size_t(r)].logprob, lp[size_t(want[size_t(r)])]);
      const auto ids = top_ids(lp, size_t(n));
      ASSERT_EQ(got[size_t(r)].top.size(), ids.size());
      for (size_t j = 0; j < ids.size(); ++j) {
        EXPECT_EQ(got[size_t(r)].top[j].first, ids[j]);
        EXPECT_EQ(got[size_t(r)].top[j].second, lp[size_t(ids[j])]);
      }
    }
  }
}

// The draw walks the candidates in ascending id order: u just below a candidate's cumulative share picks it.
TEST(SampleOp, DrawWalksCandidatesInIdOrder) {
  const std::vector<float> row0 = {0.0f, 1.0f, -kInf, 0.5f, 2.0f};
  SamplingParams p;
  p.temperature = 1.0f;
  double w[5], total = 0.0;
  for (int i = 0; i < 5; ++i) total += (w[i] = row0[size_t(i)] == -kInf ? 0.0 : std::exp(double(row0[size_t(i)] - 2.0f)));
  double cum = 0.0;
  for (int i : {0, 1, 3, 4}) {
    const double below = (cum + 0.5 * w[i]) / total;  // the middle of candidate i's share
    auto row = row0;
    EXPECT_EQ(sample_logits(row, p, {}, {}, below), i);
    cum += w[i];
  }
}

}  // namespace
}  // namespace moe
