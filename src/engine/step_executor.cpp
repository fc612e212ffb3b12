// The step executor (see step_executor.h).
#include "engine/step_executor.h"

#include <algorithm>

namespace moe {

namespace {

int32_t pow2_at_least(int32_t n) {
  int32_t p = 1;
  while (p < n) p *= 2;
  return p;
}

// The plan with its page table widened to max_pages columns (padding -1).
void widen_pages(BatchPlan& plan, int32_t max_pages) {
  if (max_pages == plan.max_pages) return;
  std::vector<int32_t> table(size_t(plan.num_seqs()) * size_t(max_pages), -1);
  for (int64_t s = 0; s < plan.num_seqs(); ++s)
    for (int32_t p = 0; p < plan.max_pages; ++p)
      table[size_t(s * max_pages + p)] = plan.block_table[size_t(s * plan.max_pages + p)];
  plan.block_table.swap(table);
  plan.max_pages = max_pages;
}

}  // namespace

bool is_uniform_step(const std::vector<SequenceChunk>& chunks) {
  if (chunks.empty()) return false;
  const size_t n = chunks[0].tokens.size();
  for (const auto& c : chunks) {
    if (c.tokens.size() != n || n == 0) return false;
    if (n > 1 && !c.all_logits) return false;  // the last-token logits of longer chunks are a host-side gather
    if (c.all_logits != chunks[0].all_logits) return false;
  }
  return true;
}

struct StepExecutor::Graph {
  BatchPlan plan;     // the current step's plan; batch.plan points here
  DeviceBatch batch;  // captured input, rewritten before each replay
  Tensor ids;         // captured input [T] I32
  ForwardOutput out;  // captured output
  std::shared_ptr<CapturedWork> work;
  bool refused = false;  // the backend could not capture this shape: always eager
  int64_t last_use = 0;
};

StepExecutor::StepExecutor(DeepseekV3& model, StepExecutorOptions options) : model_(model), options_(options) {}

StepExecutor::~StepExecutor() = default;

void StepExecutor::evict(const Graph* keep) {
  while (graphs_.size() > options_.max_graphs) {
    auto oldest = graphs_.end();
    for (auto it = graphs_.begin(); it != graphs_.end(); ++it)
      if (it->second.get() != keep && (oldest == graphs_.end() || it->second->last_use < oldest->second->last_use))
        oldest = it;
    if (oldest == graphs_.end()) return;
    graphs_.erase(oldest);
  }
}

ForwardOutput StepExecutor::forward(const std::vector<SequenceChunk>& chunks, LatentCache& cache) {
  Backend& backend = model_.backend();
  if (!is_uniform_step(chunks)) {
    ++stats_.eager;
    return model_.forward(chunks, cache);
  }
  BatchPlan plan = plan_batch(chunks, cache.page_size());
  widen_pages(plan, pow2_at_least(std::max(plan.max_pages, 1)));
  const int64_t T = plan.num_tokens();
  const bool capturable = options_.graphs && backend.can_capture(T);
  const Key key{plan.num_seqs(), int64_t(chunks[0].tokens.size()), chunks[0].all_logits, plan.max_pages,
                static_cast<const void*>(cache.layer(0).data)};
  std::shared_ptr<Graph> g;
  if (capturable) {
    std::shared_ptr<Graph>& slot = graphs_[key];
    if (!slot) {
      slot = std::make_shared<Graph>();  // seen once: run it eagerly (below), capture it next time
      slot->last_use = ++clock_;
      evict(slot.get());
    } else {
      g = slot;
    }
  }
  if (!g || g->refused) {
    ++stats_.eager;
    const DeviceBatch batch = backend.upload_batch(plan);
    const Tensor ids = model_.upload_tokens(chunks);
    return model_.run(chunks, batch, ids, cache);
  }
  g->last_use = ++clock_;
  if (!g->work) {
    g->plan = std::move(plan);
    g->batch = backend.upload_batch(g->plan);
    g->ids = model_.upload_tokens(chunks);
    backend.begin_capture();
    try {
      g->out = model_.run(chunks, g->batch, g->ids, cache);
      g->work = backend.end_capture();
      ++stats_.captures;
    } catch (const Error&) {
      // An op that needs the host mid-step: nothing ran, so run the step eagerly and never try this shape again.
      backend.abort_capture();
      g->refused = true;
      g->out = ForwardOutput{};
      ++stats_.refused;
      ++stats_.eager;
      return model_.run(chunks, g->batch, g->ids, cache);
    } catch (...) {
      backend.abort_capture();
      graphs_.erase(key);
      throw;
    }
  } else {
    g->plan = std::move(plan);
    backend.update_batch(g->plan, g->batch);
    backend.copy_from_host(model_.token_ids(chunks).data(), g->ids);
  }
  backend.replay(*g->work);
  ++stats_.replays;
  // The graph's outputs are overwritten by its next replay: hand out copies.
  ForwardOutput out;
  out.logit_rows = g->out.logit_rows;
  out.logits = backend.alloc_uninitialized(g->out.logits.dtype(), g->out.logits.view().shape);
  out.hidden = backend.alloc_uninitialized(g->out.hidden.dtype(), g->out.hidden.view().shape);
  backend.copy(g->out.logits, out.logits);
  backend.copy(g->out.hidden, out.hidden);
  for (const Tensor& chosen : g->out.index_topk) {  // V3.2's sparse-attention positions
    out.index_topk.push_back(backend.alloc_uninitialized(chosen.dtype(), chosen.view().shape));
    backend.copy(chosen, out.index_topk.back());
  }
  return out;
}

}  // namespace moe
