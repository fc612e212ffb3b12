#pragma once
// Per-request token sampling on the host: penalties, temperature, top-k, top-p, min-p, seeded RNG.
// temperature 0 is greedy (argmax, ties to the lower id).
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <unordered_map>
#include <vector>

namespace moe {

struct SamplingParams {
  float temperature = 0.0f;
  float top_p = 1.0f;
  int32_t top_k = 0;  // 0: all
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;  // HF/vLLM semantics, over prompt and output tokens
  float frequency_penalty = 0.0f;   // OpenAI semantics, over output tokens
  float presence_penalty = 0.0f;
  std::optional<uint64_t> seed;
};

int32_t argmax(std::span<const float> logits);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // `prompt` and `output` are the tokens so far, for the penalties. logits are modified in place.
  int32_t sample(std::span<float> logits, std::span<const int32_t> prompt, std::span<const int32_t> output);
  // Natural-log probabilities of the distribution the last sample was drawn from (after penalties and
  // temperature), for logprobs; computed lazily.
  static std::vector<float> log_softmax(std::span<const float> logits);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace moe
