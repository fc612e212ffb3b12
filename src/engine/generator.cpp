#include "engine/generator.h"

#include <algorithm>

#include "core/error.h"

namespace moe {

Generator::Generator(DeepseekV3& model, int64_t max_context, int64_t page_size)
    : model_(model),
      executor_(model),
      max_context_(max_context),
      page_size_(page_size),
      cache_(model.config(), model.backend(), pages_for(max_context, page_size), page_size, model.cache_layers()) {
  for (int64_t p = 0; p < cache_.num_pages(); ++p) pages_.push_back(int32_t(p));
}

std::vector<int32_t> Generator::generate(const std::vector<int32_t>& prompt, const GenerateOptions& options,
                                         const std::function<bool(int32_t)>& on_token) {
  MOE_CHECK(!prompt.empty(), "generate: the prompt is empty");
  MOE_CHECK(int64_t(prompt.size()) + options.max_new_tokens <= max_context_,
            "generate: prompt ({} tokens) plus max_new_tokens ({}) exceeds the context of {} tokens", prompt.size(),
            options.max_new_tokens, max_context_);
  // Reuse the cached prefix; always recompute at least the last prompt token to get its logits.
  size_t reuse = 0;
  while (reuse < cached_.size() && reuse + 1 < prompt.size() && cached_[reuse] == prompt[reuse]) ++reuse;
  cached_.resize(reuse);

  Sampler sampler(options.sampling);
  std::vector<int32_t> out;
  Backend& backend = model_.backend();
  std::vector<float> logits(size_t(model_.config().vocab_size));
  SequenceChunk chunk;
  chunk.tokens.assign(prompt.begin() + std::ptrdiff_t(reuse), prompt.end());
  chunk.start_pos = int32_t(reuse);
  chunk.pages = pages_;
  while (int32_t(out.size()) < options.max_new_tokens) {
    ForwardOutput fwd = executor_.forward({chunk}, cache_);
    cached_.insert(cached_.end(), chunk.tokens.begin(), chunk.tokens.end());
    backend.copy_to_host(fwd.logits, logits.data());
    const int32_t next = sampler.sample(logits, prompt, out);
    out.push_back(next);
    const bool stop = std::find(options.stop_tokens.begin(), options.stop_tokens.end(), next) != options.stop_tokens.end();
    if ((on_token && !on_token(next)) || stop) break;
    chunk.start_pos = int32_t(cached_.size());
    chunk.tokens = {next};
  }
  return out;
}

}  // namespace moe
