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
  Outputs out;        // captured output
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

StepExecutor::Outputs StepExecutor::run_uniform(const std::vector<SequenceChunk>& chunks, LatentCache& cache,
                                                int64_t kind, const Body& body, bool& owned) {
  Backend& backend = model_.backend();
  owned = false;
  BatchPlan plan = plan_batch(chunks, cache.page_size());
  widen_pages(plan, pow2_at_least(std::max(plan.max_pages, 1)));
  const int64_t T = plan.num_tokens();
  const bool capturable = options_.graphs && backend.can_capture(T);
  const Key key{plan.num_seqs(), int64_t(chunks[0].tokens.size()), chunks[0].all_logits, plan.max_pages,
                static_cast<const void*>(cache.layer(0).data), kind};
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
    return body(batch, ids);
  }
  g->last_use = ++clock_;
  if (!g->work) {
    g->plan = std::move(plan);
    g->batch = backend.upload_batch(g->plan);
    g->ids = model_.upload_tokens(chunks);
    backend.begin_capture();
    try {
      g->out = body(g->batch, g->ids);
      g->work = backend.end_capture();
      ++stats_.captures;
    } catch (const Error&) {
      // An op that needs the host mid-step: nothing ran, so run the step eagerly and never try this shape again.
      backend.abort_capture();
      g->refused = true;
      g->out = Outputs{};
      ++stats_.refused;
      ++stats_.eager;
      return body(g->batch, g->ids);
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
  owned = true;
  return g->out;
}

ForwardOutput StepExecutor::forward(const std::vector<SequenceChunk>& chunks, LatentCache& cache) {
  Backend& backend = model_.backend();
  if (!is_uniform_step(chunks)) {
    ++stats_.eager;
    return model_.forward(chunks, cache);
  }
  bool owned = false;
  Outputs o = run_uniform(
      chunks, cache, 0,
      [&](const DeviceBatch& batch, const TensorView& ids) { return Outputs{model_.run(chunks, batch, ids, cache), {}}; },
      owned);
  if (!owned) return std::move(o.fwd);
  // The graph's outputs are overwritten by its next replay: hand out copies.
  const ForwardOutput& g = o.fwd;
  ForwardOutput out;
  out.logit_rows = g.logit_rows;
  out.logits = backend.alloc_uninitialized(g.logits.dtype(), g.logits.view().shape);
  out.hidden = backend.alloc_uninitialized(g.hidden.dtype(), g.hidden.view().shape);
  backend.copy(g.logits, out.logits);
  backend.copy(g.hidden, out.hidden);
  for (const Tensor& chosen : g.index_topk) {  // V3.2's sparse-attention positions
    out.index_topk.push_back(backend.alloc_uninitialized(chosen.dtype(), chosen.view().shape));
    backend.copy(chosen, out.index_topk.back());
  }
  return out;
}

StepExecutor::SpeculativeIds StepExecutor::forward_speculative(const std::vector<SequenceChunk>& chunks,
                                                               LatentCache& cache, int64_t vocab_limit) {
  MOE_CHECK(is_uniform_step(chunks), "forward_speculative: every chunk needs the same number of tokens, all logits");
  MOE_CHECK(model_.has_mtp(), "forward_speculative: the model was loaded without its MTP module");
  Backend& backend = model_.backend();
  const int64_t limit = vocab_limit > 0 ? vocab_limit : 0;
  bool owned = false;
  Outputs o = run_uniform(
      chunks, cache, limit + 1,
      [&](const DeviceBatch& batch, const TensorView& ids) {
        Outputs out;
        out.fwd = model_.run(chunks, batch, ids, cache);
        const int64_t T = out.fwd.hidden.dim(0);
        // Logits for every row: the chunks ask for all of them (or have one token each).
        MOE_CHECK(out.fwd.logits.dim(0) == T, "forward_speculative: {} logits rows for {} tokens",
                  out.fwd.logits.dim(0), T);
        out.ids = backend.alloc_uninitialized(DType::I32, {2, T});
        const TensorView verified = out.ids.view().slice_rows(0, 1), drafts = out.ids.view().slice_rows(1, 1);
        backend.argmax_rows(out.fwd.logits, limit, verified);
        const ForwardOutput mtp = model_.run_mtp(chunks, batch, verified, out.fwd.hidden, cache);
        backend.argmax_rows(mtp.logits, limit, drafts);
        return out;
      },
      owned);
  const int64_t T = o.ids.view().shape[1];
  std::vector<int32_t> host(size_t(2 * T));
  backend.copy_to_host(o.ids, host.data());
  SpeculativeIds r;
  r.verified.assign(host.begin(), host.begin() + T);
  r.drafts.assign(host.begin() + T, host.end());
  return r;
}

}  // namespace moe
