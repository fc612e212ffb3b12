// Data-parallel attention: the owner of a chunk, the balance rule and one step over every rank (dp_attention.h).
#include "engine/dp_attention.h"

#include <algorithm>

#include "core/error.h"

namespace moe {

int32_t DpLayout::owner(const SequenceChunk& c) const {
  MOE_CHECK(pages_per_rank > 0 && ranks > 0, "data-parallel attention: {} pages per rank over {} ranks", pages_per_rank,
            ranks);
  MOE_CHECK(!c.pages.empty(), "data-parallel attention: a chunk at position {} has no pages", c.start_pos);
  const int64_t r = c.pages[0] / pages_per_rank;
  for (int32_t p : c.pages)
    MOE_CHECK(p >= 0 && p / pages_per_rank == r && r < ranks,
              "data-parallel attention: page {} of a chunk at position {} is not in rank {}'s pages [{}, {})", p,
              c.start_pos, r, r * pages_per_rank, (r + 1) * pages_per_rank);
  return int32_t(r);
}

int32_t least_loaded_rank(const std::vector<int64_t>& load) {
  MOE_CHECK(!load.empty(), "least_loaded_rank: no ranks");
  return int32_t(std::min_element(load.begin(), load.end()) - load.begin());  // the first of the smallest
}

ForwardOutput dp_forward(StepExecutor& executor, const DpLayout& layout, const std::vector<SequenceChunk>& chunks,
                         LatentCache& cache) {
  DeepseekV3& model = executor.model();
  Backend& backend = model.backend();
  ExpertParallel* ep = model.expert_parallel();
  MOE_CHECK(ep && ep->data_parallel(), "dp_forward: the model runs without data-parallel attention");
  MOE_CHECK(!chunks.empty(), "dp_forward: a step without chunks");
  MOE_CHECK(ep->ranks() == layout.ranks, "dp_forward: a layout of {} ranks on {}", layout.ranks, ep->ranks());
  MOE_CHECK(cache.num_pages() == layout.pages_per_rank, "dp_forward: a cache of {} pages for {} per rank",
            cache.num_pages(), layout.pages_per_rank);
  const int me = ep->rank(), R = layout.ranks;
  const int64_t V = model.config().vocab_size;

  // My chunks, page ids made local; every rank's logits rows (each rank runs its chunks in the step's order).
  std::vector<SequenceChunk> mine;
  std::vector<int32_t> owner(chunks.size());
  std::vector<int64_t> rows_of(size_t(R), 0);
  for (size_t i = 0; i < chunks.size(); ++i) {
    owner[i] = layout.owner(chunks[i]);
    rows_of[size_t(owner[i])] += chunks[i].all_logits ? int64_t(chunks[i].tokens.size()) : 1;
    if (owner[i] != me) continue;
    SequenceChunk c = chunks[i];
    for (int32_t& p : c.pages) p -= int32_t(int64_t(me) * layout.pages_per_rank);
    mine.push_back(std::move(c));
  }
  // The all-reduce exchange moves the most tokens any rank brings, a rank (ExpertParallel::set_step_rows).
  std::vector<int64_t> tokens_of(size_t(R), 0);
  for (size_t i = 0; i < chunks.size(); ++i) tokens_of[size_t(owner[i])] += int64_t(chunks[i].tokens.size());
  ep->set_step_rows(*std::max_element(tokens_of.begin(), tokens_of.end()));
  std::vector<float> local;
  if (mine.empty()) {
    model.forward_idle();
  } else {
    const ForwardOutput fwd = executor.forward(mine, cache);
    MOE_CHECK(fwd.logits.shape()[0] == rows_of[size_t(me)], "dp_forward: {} logits rows for {}",
              fwd.logits.shape()[0], rows_of[size_t(me)]);
    local.resize(size_t(rows_of[size_t(me)] * V));
    backend.copy_to_host(fwd.logits, local.data());
  }

  // The rows to rank 0, in rank order there.
  const size_t row_bytes = size_t(V) * sizeof(float);
  std::vector<size_t> sc(size_t(R), 0), sd(size_t(R), 0), rc(size_t(R), 0), rd(size_t(R), 0);
  sc[0] = local.size() * sizeof(float);
  int64_t total = 0;
  if (me == 0)
    for (int p = 0; p < R; ++p) {
      rc[size_t(p)] = size_t(rows_of[size_t(p)]) * row_bytes;
      rd[size_t(p)] = size_t(total) * row_bytes;
      total += rows_of[size_t(p)];
    }
  std::vector<float> by_rank(size_t(total * V));
  ep->comm().all_to_all_v(local.data(), sc, sd, by_rank.data(), rc, rd);
  ForwardOutput out;
  if (me != 0) return out;

  // Rank order -> the step's chunk order.
  std::vector<int64_t> next(size_t(R), 0);  // the next unread row of each rank
  for (int p = 1; p < R; ++p) next[size_t(p)] = next[size_t(p - 1)] + rows_of[size_t(p - 1)];
  std::vector<float> logits(by_rank.size());
  int64_t row = 0, token = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const int64_t n = int64_t(chunks[i].tokens.size()), k = chunks[i].all_logits ? n : 1;
    std::copy_n(by_rank.begin() + std::ptrdiff_t(next[size_t(owner[i])] * V), k * V,
                logits.begin() + std::ptrdiff_t(row * V));
    next[size_t(owner[i])] += k;
    for (int64_t j = chunks[i].all_logits ? 0 : n - 1; j < n; ++j) out.logit_rows.push_back(int32_t(token + j));
    row += k;
    token += n;
  }
  out.logits = backend.alloc_uninitialized(DType::F32, {row, V});
  backend.copy_from_host(logits.data(), out.logits);
  return out;
}

}  // namespace moe
