#pragma once
// The scheduler's per-request state and a step's decisions, shared by its translation units (scheduler.cpp:
// the loop, admission, steps and decisions; scheduler_speculation.cpp: the MTP drafts and the fused
// speculative step). Private to src/engine: the public interface is scheduler.h.
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/scheduler.h"

namespace moe {

struct Scheduler::Sequence {
  std::shared_ptr<RequestHandle> handle;
  std::shared_ptr<EventSink> sink;
  int32_t index = 0;
  GenerationRequest req;
  Sampler sampler;
  int64_t pages_needed = 0;
  std::vector<int32_t> pages;
  int64_t prefilled = 0;      // prompt tokens whose latents are in the cache
  int64_t cached_tokens = 0;  // of those, reused from the prefix cache at admission
  int64_t written = 0;        // positions whose latents are in the cache (prompt, then fed output tokens)
  int64_t indexed = 0;  // leading pages in the prefix cache's index (reused or indexed by this sequence)
  bool index_stopped = false;  // another sequence indexed the same prefix first: index no more of this one
  std::vector<int32_t> output;
  std::vector<TokenLogprob> prompt_logprobs;  // prompt_logprobs requests: entry i is prompt token i + 1's
  std::vector<int32_t> drafts;  // speculation: the MTP module's guesses of the tokens after output.back()
  std::optional<StreamingDecoder> decoder;
  StopMatcher stop;
  std::chrono::steady_clock::time_point submitted, last_token;
  bool done = false;

  Sequence(GenerationRequest r, const Tokenizer* tok)
      : req(std::move(r)), sampler(req.sampling), stop(req.stop) {
    if (tok) decoder.emplace(*tok, /*skip_special_tokens=*/true);
    if (req.prompt_logprobs >= 0) prompt_logprobs.resize(req.prompt.size() - 1);
  }
  bool scoring() const { return req.prompt_logprobs >= 0; }
  bool decoding() const { return prefilled == int64_t(req.prompt.size()); }
};

struct Scheduler::Decided {
  struct Token {
    int32_t id = -1;
    std::optional<TokenLogprob> logprob;
    bool constraint_complete = false;
  };
  std::vector<Token> tokens;  // kept drafts, then the row's own token (or the last kept draft, when it stops)
  int64_t drafted = 0, accepted = 0;  // drafts checked, of those kept (the leading `accepted` tokens)
  std::string error;                  // after `tokens`, the request fails with this
};

}  // namespace moe
