#pragma once
// Generation for one sequence (the CLI's generate/chat): prefill the prompt in one batched step, then decode
// token by token with the latent cache. The server's scheduler (scheduler.h) batches many of these.
#include <functional>
#include <memory>
#include <vector>

#include "engine/page_allocator.h"
#include "engine/sampler.h"
#include "engine/step_executor.h"
#include "model/deepseek_v3.h"

namespace moe {

struct GenerateOptions {
  int32_t max_new_tokens = 16;
  SamplingParams sampling;
  std::vector<int32_t> stop_tokens;  // generation ends after emitting one of these
};

class Generator {
 public:
  // A cache for up to `max_context` tokens of one sequence.
  Generator(DeepseekV3& model, int64_t max_context, int64_t page_size = 64);

  // Continues `prompt` (the whole conversation so far; the cache is reused for a shared prefix).
  // on_token(id) returns false to stop. Returns the new tokens.
  std::vector<int32_t> generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                                const std::function<bool(int32_t)>& on_token = {});
  void reset() { cached_.clear(); }
  int64_t max_context() const { return max_context_; }

 private:
  DeepseekV3& model_;
  StepExecutor executor_;  // decode steps replayed from graphs
  int64_t max_context_, page_size_;
  LatentCache cache_;
  std::vector<int32_t> pages_;
  std::vector<int32_t> cached_;  // tokens whose latents are in the cache, in order
};

}  // namespace moe
