// The host sampler against a plain reference: argmax by a scalar scan, the candidate set by a full sort of
// the vocabulary (the textbook order: temperature, top-k, min-p, top-p over the top-k set's mass), the draws
// against their probabilities, and the penalties by hand. Rows carry ties, masked (-inf) and NaN logits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>

#include "engine/sampler.h"

namespace moe {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Logits on a grid of 1/4 (many ties), with a share of masked and NaN entries.
std::vector<float> random_row(std::mt19937& rng, size_t n, double masked = 0.05, double nan = 0.0) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<float> row(n);
  for (auto& v : row) {
    const double r = unit(rng);
    v = r < masked         ? -kInf
        : r < masked + nan ? std::numeric_limits<float>::quiet_NaN()
                           : std::round(normal(rng) * 4) / 4;
  }
  return row;
}

int32_t reference_argmax(const std::vector<float>& row) {
  int32_t best = -1;
  for (size_t i = 0; i < row.size(); ++i)
    if (!std::isnan(row[i]) && (best < 0 || row[i] > row[size_t(best)])) best = int32_t(i);
  return std::max(best, 0);
}

TEST(Sampler, ArgmaxIsTheFirstLargestAndSkipsNaN) {
  std::mt19937 rng(1);
  for (size_t n : {size_t(0), size_t(1), size_t(15), size_t(16), size_t(17), size_t(1000), size_t(129280)})
    for (int rep = 0; rep < 20; ++rep) {
      const auto row = random_row(rng, n, 0.1, 0.1);
      ASSERT_EQ(argmax(row), reference_argmax(row)) << "n=" << n << " rep=" << rep;
    }
  EXPECT_EQ(argmax(std::vector<float>(40, std::numeric_limits<float>::quiet_NaN())), 0);
  EXPECT_EQ(argmax(std::vector<float>(40, -kInf)), 0);
  std::vector<float> late(100, 1.0f);
  late[99] = 2.0f;
  EXPECT_EQ(argmax(late), 99);
}

TEST(Sampler, TopIdsAreTheFirstKOfAFullSort) {
  std::mt19937 rng(8);
  for (size_t n : {size_t(0), size_t(5), size_t(1000), size_t(129280)})
    for (size_t k : {size_t(0), size_t(1), size_t(20), size_t(2000)}) {
      const auto row = random_row(rng, n, 0.05, 0.02);
      std::vector<int32_t> want;
      for (size_t i = 0; i < n; ++i)
        if (!std::isnan(row[i])) want.push_back(int32_t(i));
      std::stable_sort(want.begin(), want.end(), [&](int32_t a, int32_t b) { return row[size_t(a)] > row[size_t(b)]; });
      want.resize(std::min(k, want.size()));
      ASSERT_EQ(top_ids(row, k), want) << "n=" << n << " k=" << k;
    }
}

// The candidate set by sorting everything; `ambiguous` when the top-p boundary is within rounding of target.
std::map<int32_t, double> reference_candidates(const std::vector<float>& row, const SamplingParams& p,
                                               bool& ambiguous) {
  std::vector<int32_t> idx;
  for (size_t i = 0; i < row.size(); ++i)
    if (row[i] > -kInf) idx.push_back(int32_t(i));
  std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
    return row[size_t(a)] > row[size_t(b)] || (row[size_t(a)] == row[size_t(b)] && a < b);
  });
  if (p.top_k > 0 && size_t(p.top_k) < idx.size()) idx.resize(size_t(p.top_k));
  const float mx = row[size_t(idx[0])];
  std::vector<double> w;
  double total = 0.0;
  for (int32_t i : idx) total += w.emplace_back(std::exp(double(row[size_t(i)] - mx) / p.temperature));
  size_t n = idx.size();
  while (n > 1 && w[n - 1] < p.min_p) --n;
  ambiguous = false;
  if (p.top_p < 1.0f) {
    double cum = 0.0;
    const double target = double(p.top_p) * total;
    for (size_t i = 0; i < n; ++i) {
      cum += w[i];
      ambiguous |= std::abs(cum - target) <= 1e-9 * total;
      if (cum >= target) {
        n = i + 1;
        break;
      }
    }
  }
  std::map<int32_t, double> out;
  for (size_t i = 0; i < n; ++i) out[idx[i]] = w[i];
  return out;
}

SamplingParams params(float temperature, float top_p, int32_t top_k, float min_p) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_p = top_p;
  p.top_k = top_k;
  p.min_p = min_p;
  return p;
}

TEST(Sampler, CandidatesMatchAFullSort) {
  std::mt19937 rng(2);
  int compared = 0, ambiguous_cases = 0;
  SamplingCandidates got;
  for (size_t n : {size_t(1), size_t(7), size_t(1000), size_t(50000)})
    for (float t : {0.3f, 1.0f, 2.5f})
      for (int32_t k : {0, 1, 5, 100})
        for (float top_p : {1.0f, 0.95f, 0.5f, 0.01f})
          for (float min_p : {0.0f, 0.05f, 0.5f}) {
            const auto row = random_row(rng, n, n > 1 ? 0.05 : 0.0);
            const auto p = params(t, top_p, k, min_p);
            bool ambiguous = false;
            const auto want = reference_candidates(row, p, ambiguous);
            if (ambiguous) {
              ++ambiguous_cases;
              continue;
            }
            sampling_candidates(row, p, got);
            std::map<int32_t, double> have;
            for (size_t i = 0; i < got.ids.size(); ++i) have[got.ids[i]] = got.weights[i];
            ASSERT_EQ(have, want) << "n=" << n << " T=" << t << " top_k=" << k << " top_p=" << top_p
                                  << " min_p=" << min_p;
            ++compared;
          }
  std::printf(
      "%d candidate sets equal to the full sort's, %d skipped as within rounding of the top-p boundary\n",
      compared, ambiguous_cases);
  EXPECT_LE(ambiguous_cases * 100, compared);
}

TEST(Sampler, LargeVocabularyCandidatesMatchAFullSort) {
  std::mt19937 rng(3);
  SamplingCandidates got;
  for (const auto& p : {params(0.6f, 0.95f, 0, 0.0f), params(1.0f, 1.0f, 40, 0.0f),
                        params(0.7f, 0.9f, 0, 0.05f), params(1.0f, 0.5f, 2000, 0.0f)}) {
    const auto row = random_row(rng, 163840, 0.01);
    bool ambiguous = false;
    const auto want = reference_candidates(row, p, ambiguous);
    ASSERT_FALSE(ambiguous);
    sampling_candidates(row, p, got);
    std::map<int32_t, double> have;
    for (size_t i = 0; i < got.ids.size(); ++i) have[got.ids[i]] = got.weights[i];
    EXPECT_EQ(have, want) << "T=" << p.temperature << " top_p=" << p.top_p << " top_k=" << p.top_k;
  }
}

// Draws follow the candidates' probabilities: each count within 6 standard deviations of N p (a false alarm
// about once in 10^8 per token; the seed makes the test deterministic), and nothing outside the set is drawn.
TEST(Sampler, DrawsFollowTheCandidateProbabilities) {
  const std::vector<float> row = {1.0f, 3.0f, -kInf, 2.5f, 0.0f, 3.0f, -1.0f, 2.0f};
  constexpr int kDraws = 200000;
  for (const auto& p : {params(1.0f, 1.0f, 0, 0.0f), params(0.7f, 0.8f, 0, 0.0f), params(1.3f, 1.0f, 3, 0.0f),
                        params(1.0f, 1.0f, 0, 0.2f)}) {
    SamplingCandidates cand;
    sampling_candidates(row, p, cand);
    const double total = std::accumulate(cand.weights.begin(), cand.weights.end(), 0.0);
    SamplingParams seeded = p;
    seeded.seed = 5;
    Sampler sampler(seeded);
    std::map<int32_t, int> counts;
    for (int i = 0; i < kDraws; ++i) {
      std::vector<float> copy = row;
      ++counts[sampler.sample(copy, {}, {})];
    }
    for (const auto& [id, n] : counts)
      EXPECT_NE(std::find(cand.ids.begin(), cand.ids.end(), id), cand.ids.end())
          << "drew " << id << " outside the set";
    for (size_t i = 0; i < cand.ids.size(); ++i) {
      const double prob = cand.weights[i] / total, mean = kDraws * prob,
                   sd = std::sqrt(kDraws * prob * (1 - prob));
      EXPECT_NEAR(counts[cand.ids[i]], mean, 6 * sd + 1) << "token " << cand.ids[i] << " T=" << p.temperature;
    }
  }
}

TEST(Sampler, SameSeedSameTokensAndGreedyIgnoresTheSeed) {
  std::mt19937 rng(4);
  const auto row = random_row(rng, 5000);
  auto p = params(1.0f, 0.9f, 0, 0.0f);
  p.seed = 42;
  Sampler a(p), b(p);
  for (int i = 0; i < 50; ++i) {
    auto ra = row, rb = row;
    ASSERT_EQ(a.sample(ra, {}, {}), b.sample(rb, {}, {}));
  }
  Sampler greedy(params(0.0f, 1.0f, 0, 0.0f));
  auto r = row;
  EXPECT_EQ(greedy.sample(r, {}, {}), reference_argmax(row));
}

TEST(Sampler, PenaltiesAsDefined) {
  std::vector<float> row = {2.0f, -2.0f, 1.0f, 0.5f, -1.0f};
  SamplingParams p;
  p.repetition_penalty = 2.0f;  // each distinct seen token once: positive divided, negative multiplied
  p.frequency_penalty = 0.25f;  // output tokens only, times their count
  p.presence_penalty = 0.125f;
  const std::vector<int32_t> prompt = {0, 0, 1, 99, -3}, output = {1, 3, 3, 3, 7};
  apply_penalties(row, p, prompt, output);
  EXPECT_FLOAT_EQ(row[0], 1.0f);                        // prompt only: 2 / 2
  EXPECT_FLOAT_EQ(row[1], -4.0f - 0.25f - 0.125f);      // repetition once, then frequency 1 + presence
  EXPECT_FLOAT_EQ(row[2], 1.0f);                        // never seen
  EXPECT_FLOAT_EQ(row[3], 0.25f - 3 * 0.25f - 0.125f);  // output three times
  EXPECT_FLOAT_EQ(row[4], -1.0f);
}

TEST(Sampler, LogSoftmaxNormalises) {
  std::mt19937 rng(6);
  const auto row = random_row(rng, 129280, 0.0);
  const auto lp = Sampler::log_softmax(row);
  double sum = 0.0;
  for (float v : lp) sum += std::exp(double(v));
  EXPECT_NEAR(sum, 1.0,
              1e-4);  // each of 129,280 log-probabilities is rounded to float (relative 6e-8 of |lse|)
  EXPECT_FLOAT_EQ(lp[5] - lp[9], row[5] - row[9]);
}

}  // namespace
}  // namespace moe
