#pragma once
// A prefill then greedy decode steps of one sequence, every row's logits kept: what the expert-parallel tests
// compare between one process and the ranks (test_ep_all_reduce.cpp, test_shared_routed.cpp).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/step_executor.h"
#include "model/deepseek_v3.h"

namespace moe::test {

struct Steps {
  std::vector<float> logits;  // every row of the prefill, then each decode step's row
  std::vector<int32_t> greedy;
  uint64_t bytes = 0;   // ExpertParallel::bytes_sent
  int64_t replays = 0;  // decode steps replayed from graphs (with `graphs`)
};

// A prefill of `tokens`, then `decode` greedy steps; the decode steps through a StepExecutor when `graphs`.
inline Steps run_steps(DeepseekV3& model, const std::vector<int32_t>& tokens, int decode,
                       bool graphs = false) {
  Steps r;
  const int64_t page = 16, T = int64_t(tokens.size()) + decode, V = model.config().vocab_size;
  LatentCache cache(model.config(), model.backend(), (T + page - 1) / page, page, model.cache_layers());
  std::vector<int32_t> pages;
  for (int64_t p = 0; p < cache.num_pages(); ++p) pages.push_back(int32_t(p));
  SequenceChunk chunk{tokens, 0, pages, true};
  StepExecutor executor(model);
  ExpertParallel* ep = model.expert_parallel();
  for (int step = 0; step <= decode; ++step) {
    // One sequence: with data-parallel attention (one rank) the step's rows a rank are its tokens.
    if (ep && ep->data_parallel()) ep->set_step_rows(int64_t(chunk.tokens.size()));
    const ForwardOutput out =
        graphs && step > 0 ? executor.forward({chunk}, cache) : model.forward({chunk}, cache);
    std::vector<float> host(size_t(out.logits.numel()));
    model.backend().copy_to_host(out.logits, host.data());
    r.logits.insert(r.logits.end(), host.begin(), host.end());
    const float* last = host.data() + host.size() - size_t(V);
    r.greedy.push_back(int32_t(std::max_element(last, last + V) - last));
    chunk = SequenceChunk{{r.greedy.back()}, chunk.start_pos + int32_t(chunk.tokens.size()), pages, true};
  }
  if (ep) r.bytes = ep->bytes_sent();
  r.replays = executor.stats().replays;
  return r;
}

}  // namespace moe::test
