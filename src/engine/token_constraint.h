#pragma once
// A per-request restriction of which token may come next: structured output (a JSON Schema compiled to an
// automaton over the vocabulary), forced tool calls, anything that must hold token by token during decoding.
//
// The scheduler calls, for each token of a constrained request, on its own sampling thread:
//   mask(row)      before penalties and sampling (after the model's logprobs are taken, so `logprobs` still
//                  report the model's distribution): sets the logits of tokens not allowed next to -inf;
//   accept(token)  with the sampled token (always one the mask allowed);
//   complete()     after accept: true ends the request with finish_reason "stop" (the constrained text is whole).
// If mask() leaves no token allowed, or throws, the request fails with that error (it never samples freely).
#include <cstdint>
#include <span>

namespace moe {

class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;
  virtual void mask(std::span<float> logits) = 0;  // logits: one row, the model's vocabulary width
  virtual void accept(int32_t token) = 0;
  virtual bool complete() const = 0;
};

}  // namespace moe
