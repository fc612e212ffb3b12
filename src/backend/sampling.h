#pragma once
// Token sampling on the host, per row of logits: logit_bias, penalties, temperature, top-k, min-p, top-p and a
// draw from one uniform number; temperature 0 is greedy (argmax, ties to the lower id). Also the row
// description and result of Backend::sample, whose default (the CPU backend's) runs sample_row_host below and
// whose CUDA version (backend/cuda/sample.cu) makes the same choices on the device.
//
// Cost per row of V logits (bench/engine/bench_sampler.cpp): greedy is one read of the row; temperature
// sampling is one exp per logit plus, for top-k and top-p, a selection (nth_element) rather than a sort of
// the vocabulary, so a 160k-token row costs about a millisecond whatever the settings.
#include <cstdint>
#include <optional>
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

// Log-probabilities of the row as given: l - log(sum(exp(l))), accumulated in double.
std::vector<float> log_softmax(std::span<const float> logits);

// Samples one token from `logits` (edited in place: logit_bias, penalties): greedy for temperature <= 0, else
// the candidates of sampling_candidates() walked in ascending id order, the first whose cumulative weight
// exceeds u times their total (u uniform in [0, 1), drawn by the caller from the request's RNG).
int32_t sample_logits(std::span<float> logits, const SamplingParams& params, std::span<const int32_t> prompt,
                      std::span<const int32_t> output, double u);

// One row of a Backend::sample call. The spans must outlive the call.
struct SampleRow {
  int64_t row = 0;                      // which row of the logits
  const SamplingParams* params = nullptr;
  std::span<const int32_t> prompt, output;  // tokens so far, for the penalties
  // Empty: every token may follow; else ceil(V / 32) words, token t allowed iff bit t % 32 of word t / 32 is
  // set (a TokenConstraint's mask). Applied after the logprobs are taken.
  std::span<const uint32_t> allowed;
  int64_t vocab_limit = INT64_MAX;  // ids >= this are never drawn nor counted in logprobs (a padded vocabulary)
  int32_t top_logprobs = -1;        // -1: none; else the chosen token's logprob and this many alternatives
  double u = 0.0;                   // uniform in [0, 1): the draw
};
inline SampleRow sample_row(int64_t row, const SamplingParams* params, double u = 0.0) {
  SampleRow r;
  r.row = row;
  r.params = params;
  r.u = u;
  return r;
}
struct SampleResult {
  int32_t token = 0;
  float logprob = 0.0f;                            // with top_logprobs >= 0: of the model's distribution
  std::vector<std::pair<int32_t, float>> top;      // the top_logprobs most likely (id, logprob), largest first
};
inline bool allowed_bit(std::span<const uint32_t> words, int64_t t) {
  return (words[size_t(t >> 5)] >> (t & 31)) & 1u;
}
// The host version of one row: padding past vocab_limit, logprobs, the mask, then sample_logits.
SampleResult sample_row_host(std::span<float> logits, const SampleRow& row);

}  // namespace moe
