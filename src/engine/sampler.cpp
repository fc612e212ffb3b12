// Sampler::verify (see sampler.h): the speculative acceptance rule on the host, over the same processed row
// (logit_bias, penalties, temperature, top-k, min-p, top-p) that backend/sampling.h's sample_logits draws from.
#include "engine/sampler.h"

namespace moe {

int32_t Sampler::verify(std::span<float> logits, std::span<const int32_t> prompt, std::span<const int32_t> output,
                        int32_t draft, bool& accepted) {
  for (auto [id, bias] : params_.logit_bias)
    if (id >= 0 && size_t(id) < logits.size()) logits[size_t(id)] += bias;
  apply_penalties(logits, params_, prompt, output);
  if (params_.temperature <= 0.0f) {
    const int32_t t = argmax(logits);
    accepted = t == draft;
    return t;
  }
  thread_local SamplingCandidates c;
  sampling_candidates(logits, params_, c);
  double total = 0.0, p_draft = 0.0;
  for (size_t i = 0; i < c.ids.size(); ++i) {
    total += c.weights[i];
    if (c.ids[i] == draft) p_draft += c.weights[i];
  }
  if (draw() * total < p_draft) {  // kept with probability p(draft) = weight / total
    accepted = true;
    return draft;
  }
  accepted = false;
  // The residual: p without the draft, renormalised (its weight is total - p_draft > 0, as the draw fell there).
  const double x = draw() * (total - p_draft);
  double cum = 0.0;
  int32_t last = -1;
  for (size_t i = 0; i < c.ids.size(); ++i) {
    if (c.ids[i] == draft || c.weights[i] <= 0.0) continue;
    last = c.ids[i];
    if (x < (cum += c.weights[i])) return c.ids[i];
  }
  return last >= 0 ? last : draft;  // x rounded past the sum: the last that can be drawn
}

SamplingParams apply_generation_defaults(SamplingParams base, const GenerationDefaults& g) {
  if (g.temperature) base.temperature = float(*g.temperature);
  if (g.do_sample && !*g.do_sample) base.temperature = 0.0f;
  if (g.top_p) base.top_p = float(*g.top_p);
  if (g.top_k) base.top_k = *g.top_k;
  if (g.min_p) base.min_p = float(*g.min_p);
  if (g.repetition_penalty) base.repetition_penalty = float(*g.repetition_penalty);
  return base;
}

}  // namespace moe
