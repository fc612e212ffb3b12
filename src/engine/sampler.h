#pragma once
// Per-request token sampling on the host: penalties, temperature, top-k, min-p, top-p, seeded RNG.
// temperature 0 is greedy (argmax, ties to the lower id).
//
// Cost per row of V logits (bench/engine/bench_sampler.cpp): greedy is one read of the row; temperature
// sampling is one exp per logit plus, for top-k and top-p, a selection (nth_element) rather than a sort of
// the vocabulary, so a 160k-token row costs about a millisecond whatever the settings.
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <utility>
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
  // OpenAI logit_bias: (token id, bias in [-100, 100]) added to the logits before penalties and sampling
  // (-100 in effect bans a token, +100 makes it the choice); ids outside the row are ignored.
  std::vector<std::pair<int32_t, float>> logit_bias;
};

// Index of the largest logit, ties to the lower index; NaNs are never chosen (0 if every logit is NaN).
int32_t argmax(std::span<const float> logits);
// Indices of the k largest values, largest first, ties to the lower index; NaNs are passed over. One pass with
// a k-heap: O(V log k), and a value enters the heap only when it beats the heap's lowest.
std::vector<int32_t> top_ids(std::span<const float> values, size_t k);

// The tokens a temperature > 0 sample is drawn from, with unnormalised weights exp((l - max) / temperature):
// the top_k by logit (ties to the lower id), of those the ones with weight >= min_p times the largest, and of
// those the smallest set of highest logits whose weights reach top_p of the top-k set's total. The order of
// the entries is unspecified (but fixed for a given row).
struct SamplingCandidates {
  std::vector<int32_t> ids;
  std::vector<double> weights;
};
void sampling_candidates(std::span<const float> logits, const SamplingParams& params,
                         SamplingCandidates& out);

// Repetition, frequency and presence penalties applied to logits in place (`prompt` and `output` are the
// tokens so far; ids outside the row are ignored).
void apply_penalties(std::span<float> logits, const SamplingParams& params, std::span<const int32_t> prompt,
                     std::span<const int32_t> output);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // `prompt` and `output` are the tokens so far, for the penalties. logits are modified in place.
  int32_t sample(std::span<float> logits, std::span<const int32_t> prompt, std::span<const int32_t> output);
  // Speculative verification of a draft token (drafted greedily, so its draft distribution q is one-hot) against
  // this row, processed exactly as sample() does into the distribution p it would sample from. Greedy: the
  // argmax, which accepts the draft when equal. Sampled: the draft is kept with probability p(draft), else a
  // token is drawn from p with the draft removed and renormalised (the rule min(1, p/q), residual
  // norm(max(0, p - q)) for one-hot q), so the token returned is distributed exactly as p. Sets `accepted`.
  int32_t verify(std::span<float> logits, std::span<const int32_t> prompt, std::span<const int32_t> output,
                 int32_t draft, bool& accepted);
  // Natural-log probabilities of the model's distribution over the row as given (before penalties and
  // temperature: what OpenAI's logprobs report).
  static std::vector<float> log_softmax(std::span<const float> logits);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace moe
