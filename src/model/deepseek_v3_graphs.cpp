// Decode steps replayed from captured graphs. A decode step (one new token per sequence, the last logits
// only) launches ~20 kernels per layer, ~560 for a 27-layer model, each a few microseconds of work at batch
// 1: enqueued one by one, the launch gaps and the host cost of planning them are a large part of the step.
// Its shapes repeat from step to step except for the sequences' lengths, which the kernels read from the
// device. So forward() captures the step once per (sequences, page-table width, cache) and afterwards only
// rewrites the captured inputs (token ids, positions, slots, page tables) and replays the graph.
//
// Host-side choices frozen into a graph must not depend on the lengths: the page table is padded to a
// power-of-two width (the key), and the backend sizes MLA's sequence splits from that capacity, not from
// the current lengths; every decode step gets that padding, captured or not, so an eager step runs exactly
// the kernels a replay does. A key is captured the second time it is seen, so one-off shapes run eagerly.
#include "model/deepseek_v3.h"

namespace moe {

namespace {

constexpr size_t kMaxGraphs = 32;  // captured shapes kept; the least recently used goes first

int32_t pow2_at_least(int32_t n) {
  int32_t p = 1;
  while (p < n) p *= 2;
  return p;
}

// The plan with its page table widened to max_pages columns (padding -1).
BatchPlan widen_pages(const BatchPlan& plan, int32_t max_pages) {
  BatchPlan out = plan;
  out.max_pages = max_pages;
  out.block_table.assign(size_t(plan.num_seqs()) * size_t(max_pages), -1);
  for (int64_t s = 0; s < plan.num_seqs(); ++s)
    for (int32_t p = 0; p < plan.max_pages; ++p)
      out.block_table[size_t(s * max_pages + p)] = plan.block_table[size_t(s * plan.max_pages + p)];
  return out;
}

}  // namespace

struct DeepseekV3::DecodeGraph {
  BatchPlan plan;     // the current step's plan; batch.plan points here
  DeviceBatch batch;  // captured input, rewritten before each replay
  Tensor ids;         // captured input [S] I32
  ForwardOutput out;  // captured output
  std::shared_ptr<CapturedWork> work;
  int64_t last_use = 0;
};

bool is_decode_step(const std::vector<SequenceChunk>& chunks) {
  if (chunks.empty()) return false;
  for (const auto& c : chunks)
    if (c.tokens.size() != 1 || c.all_logits) return false;
  return true;
}

void widen_decode_plan(const std::vector<SequenceChunk>& chunks, BatchPlan& plan) {
  if (is_decode_step(chunks)) plan = widen_pages(plan, pow2_at_least(std::max(plan.max_pages, 1)));
}

bool DeepseekV3::graph_eligible(const std::vector<SequenceChunk>& chunks) const {
  return is_decode_step(chunks) && backend_.can_capture(int64_t(chunks.size()));
}

ForwardOutput DeepseekV3::forward_graphed(const std::vector<SequenceChunk>& chunks, BatchPlan plan,
                                          LatentCache& cache) {
  const int32_t width = plan.max_pages;  // widened by forward()
  const auto key = std::make_tuple(plan.num_seqs(), width, static_cast<const void*>(cache.layer(0).data));
  std::shared_ptr<DecodeGraph>& g = graphs_[key];
  const bool first_time = g == nullptr;
  if (first_time) g = std::make_shared<DecodeGraph>();
  g->last_use = ++graph_clock_;
  if (first_time || g->work == nullptr) {
    g->plan = std::move(plan);
    g->batch = backend_.upload_batch(g->plan);
    g->ids = upload_tokens(chunks);
    if (first_time) return run_layers(chunks, g->batch, g->ids, cache);  // seen once: run it eagerly
    backend_.begin_capture();
    try {
      g->out = run_layers(chunks, g->batch, g->ids, cache);
      g->work = backend_.end_capture();
      ++graph_stats_.captures;
    } catch (...) {
      backend_.abort_capture();
      graphs_.erase(key);
      throw;
    }
    if (graphs_.size() > kMaxGraphs) {
      auto oldest = graphs_.begin();
      for (auto it = graphs_.begin(); it != graphs_.end(); ++it)
        if (it->second->last_use < oldest->second->last_use) oldest = it;
      graphs_.erase(oldest);
    }
  } else {
    g->plan = std::move(plan);
    backend_.update_batch(g->plan, g->batch);
    backend_.copy_from_host(token_ids(chunks).data(), g->ids);
  }
  backend_.replay(*g->work);
  ++graph_stats_.replays;
  // The graph's outputs are overwritten by its next replay: hand out copies.
  ForwardOutput out;
  out.logit_rows = g->out.logit_rows;
  out.logits = backend_.alloc_uninitialized(g->out.logits.dtype(), g->out.logits.view().shape);
  out.hidden = backend_.alloc_uninitialized(g->out.hidden.dtype(), g->out.hidden.view().shape);
  backend_.copy(g->out.logits, out.logits);
  backend_.copy(g->out.hidden, out.hidden);
  return out;
}

}  // namespace moe
