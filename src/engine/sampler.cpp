#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace moe {

int32_t argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[size_t(best)]) best = int32_t(i);
  return best;
}

Sampler::Sampler(const SamplingParams& params)
    : params_(params), rng_(params.seed ? *params.seed : std::random_device{}()) {}

std::vector<float> Sampler::log_softmax(std::span<const float> logits) {
  const float mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float l : logits) sum += std::exp(double(l - mx));
  const float lse = mx + float(std::log(sum));
  std::vector<float> out(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) out[i] = logits[i] - lse;
  return out;
}

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> prompt, std::span<const int32_t> output) {
  const auto& p = params_;
  if (p.repetition_penalty != 1.0f) {
    auto penalise = [&](int32_t t) {
      if (t < 0 || size_t(t) >= logits.size()) return;
      float& l = logits[size_t(t)];
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    };
    std::vector<int32_t> seen(prompt.begin(), prompt.end());
    seen.insert(seen.end(), output.begin(), output.end());
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (int32_t t : seen) penalise(t);
  }
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
    std::unordered_map<int32_t, int32_t> counts;
    for (int32_t t : output) ++counts[t];
    for (auto [t, n] : counts)
      if (t >= 0 && size_t(t) < logits.size()) logits[size_t(t)] -= p.frequency_penalty * float(n) + p.presence_penalty;
  }
  if (p.temperature <= 0.0f) return argmax(logits);

  // Candidates sorted by logit, then truncated by top-k, min-p and top-p.
  std::vector<int32_t> idx(logits.size());
  std::iota(idx.begin(), idx.end(), 0);
  size_t keep = idx.size();
  if (p.top_k > 0) keep = std::min(keep, size_t(p.top_k));
  std::partial_sort(idx.begin(), idx.begin() + std::ptrdiff_t(keep), idx.end(),
                    [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b); });
  idx.resize(keep);
  const float mx = logits[size_t(idx[0])];
  std::vector<double> prob(keep);
  double sum = 0.0;
  for (size_t i = 0; i < keep; ++i) sum += (prob[i] = std::exp(double(logits[size_t(idx[i])] - mx) / p.temperature));
  for (auto& v : prob) v /= sum;
  size_t n = keep;
  if (p.min_p > 0.0f) {
    const double floor = p.min_p * prob[0];
    while (n > 1 && prob[n - 1] < floor) --n;
  }
  if (p.top_p < 1.0f) {
    double cum = 0.0;
    for (size_t i = 0; i < n; ++i) {
      cum += prob[i];
      if (cum >= p.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) total += prob[i];
  std::uniform_real_distribution<double> uniform(0.0, total);
  double u = uniform(rng_);
  for (size_t i = 0; i < n; ++i) {
    u -= prob[i];
    if (u <= 0.0) return idx[i];
  }
  return idx[n - 1];
}

}  // namespace moe
