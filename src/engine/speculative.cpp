#include "engine/speculative.h"

#include "core/error.h"
#include "engine/page_allocator.h"
#include "engine/sampler.h"
#include "engine/step_executor.h"

namespace moe {

namespace {

// Greedy token of every logits row.
std::vector<int32_t> argmax_rows(Backend& backend, const Tensor& logits) {
  const int64_t rows = logits.dim(0), V = logits.dim(1);
  std::vector<float> host(static_cast<size_t>(rows * V));
  backend.copy_to_host(logits, host.data());
  std::vector<int32_t> out;
  for (int64_t r = 0; r < rows; ++r) out.push_back(argmax(std::span<const float>(host.data() + r * V, size_t(V))));
  return out;
}

}  // namespace

std::vector<int32_t> generate_greedy_mtp(DeepseekV3& model, const std::vector<int32_t>& prompt, int32_t max_new_tokens,
                                         SpeculativeStats* stats, int64_t page_size,
                                         const DraftOverride& draft_override) {
  MOE_CHECK(model.has_mtp(), "speculative decoding needs the model's MTP module (load it with load_mtp)");
  MOE_CHECK(!prompt.empty(), "generate: the prompt is empty");
  SpeculativeStats local;
  SpeculativeStats& st = stats ? *stats : local;
  Backend& backend = model.backend();
  const int64_t T = int64_t(prompt.size());
  // Verification may write one position past the last token kept.
  LatentCache cache(model.config(), backend, pages_for(T + max_new_tokens + 2, page_size), page_size, model.cache_layers());
  std::vector<int32_t> pages;
  for (int64_t p = 0; p < cache.num_pages(); ++p) pages.push_back(int32_t(p));
  std::vector<int32_t> out;
  if (max_new_tokens <= 0) return out;

  // Prefill: the main model over the prompt gives the first new token and h[0..T-1]; the MTP module over
  // (t[j+1], h[j]) for j = 0..T-1 drafts the token after it.
  StepExecutor executor(model);  // the verification steps (two tokens, all logits) repeat: replayed from graphs
  ForwardOutput main = executor.forward({SequenceChunk{prompt, 0, pages, false}}, cache);
  int32_t next = argmax_rows(backend, main.logits)[0];
  out.push_back(next);
  std::vector<int32_t> shifted(prompt.begin() + 1, prompt.end());
  shifted.push_back(next);
  ForwardOutput mtp = model.forward_mtp({SequenceChunk{shifted, 0, pages, false}}, main.hidden, cache);
  int32_t draft = argmax_rows(backend, mtp.logits)[0];
  if (draft_override) draft = draft_override(T + 1, draft);

  // Invariant: positions < pos are in both caches; `next` (at pos) is a kept token not yet seen by the main
  // model; `draft` guesses the token at pos + 1.
  int32_t pos = int32_t(T);
  while (int32_t(out.size()) < max_new_tokens) {
    main = executor.forward({SequenceChunk{{next, draft}, pos, pages, true}}, cache);
    const std::vector<int32_t> verified = argmax_rows(backend, main.logits);  // tokens at pos + 1, pos + 2
    ++st.main_passes;
    ++st.drafted;
    std::vector<int32_t> kept;  // tokens at pos + 1 (and pos + 2 when the draft was right)
    if (verified[0] == draft) {
      ++st.accepted;
      kept = {draft, verified[1]};
    } else {
      kept = {verified[0]};
    }
    for (int32_t t : kept) {
      if (int32_t(out.size()) < max_new_tokens) out.push_back(t);
    }
    if (int32_t(out.size()) >= max_new_tokens) break;
    // MTP rows for the positions the main model just confirmed: (t[j+1], h[j]) for j = pos .. pos+|kept|-1.
    const int64_t n = int64_t(kept.size());
    mtp = model.forward_mtp({SequenceChunk{kept, pos, pages, false}}, main.hidden.view().slice_rows(0, n), cache);
    draft = argmax_rows(backend, mtp.logits)[0];
    next = kept.back();
    pos += int32_t(n);
    if (draft_override) draft = draft_override(pos + 1, draft);
  }
  return out;
}

}  // namespace moe
