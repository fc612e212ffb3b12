#pragma once
// A request's sampler: its parameters and its seeded RNG, which draws the one uniform number per token that
// the sampling itself (backend/sampling.h, on the host or on the device through Backend::sample) consumes.
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include "backend/sampling.h"
#include "io/generation_config.h"

namespace moe {

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params)
      : params_(params), rng_(params.seed ? *params.seed : std::random_device{}()) {}
  const SamplingParams& params() const { return params_; }
  // The next uniform number in [0, 1) of this request's RNG (53 random bits).
  double draw() { return std::generate_canonical<double, std::numeric_limits<double>::digits>(rng_); }
  // `prompt` and `output` are the tokens so far, for the penalties. logits are modified in place.
  int32_t sample(std::span<float> logits, std::span<const int32_t> prompt, std::span<const int32_t> output) {
    return sample_logits(logits, params_, prompt, output, params_.temperature > 0.0f ? draw() : 0.0);
  }
  static std::vector<float> log_softmax(std::span<const float> logits) { return moe::log_softmax(logits); }
  // Speculative verification of a draft token (drafted greedily, so its draft distribution q is one-hot) against
  // this row, processed exactly as sample() does into the distribution p it would sample from (sampler.cpp).
  // Greedy: the argmax, which accepts the draft when equal. Sampled: the draft is kept with probability
  // p(draft), else a token is drawn from p with the draft removed and renormalised (the rule min(1, p/q),
  // residual norm(max(0, p - q)) for one-hot q), so the token returned is distributed exactly as p.
  int32_t verify(std::span<float> logits, std::span<const int32_t> prompt, std::span<const int32_t> output,
                 int32_t draft, bool& accepted);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

// A checkpoint's recommended sampling (generation_config.json) over `base`: each key the file sets replaces base's
// field; do_sample false makes the temperature 0 (greedy), as in HF transformers. Used where a request or the
// command line leaves a parameter out.
SamplingParams apply_generation_defaults(SamplingParams base, const GenerationDefaults& g);

}  // namespace moe
