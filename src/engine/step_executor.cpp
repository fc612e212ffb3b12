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

// A batch of one token per sequence over `plan`'s sequences and page table, for Backend::chain_batch to
// place: until it does, each token stands at its sequence's first position of the step (a valid slot).
BatchPlan chain_plan(const BatchPlan& plan) {
  BatchPlan c;
  const int64_t S = plan.num_seqs();
  std::vector<int32_t> first(size_t(S), -1);
  for (int64_t t = plan.num_tokens() - 1; t >= 0; --t) first[size_t(plan.token_seq[size_t(t)])] = int32_t(t);
  for (int64_t s = 0; s < S; ++s) {
    const size_t t = size_t(std::max(first[size_t(s)], 0));
    c.positions.push_back(plan.positions[t]);
    c.token_seq.push_back(int32_t(s));
    c.slots.push_back(plan.slots[t]);
    c.seq_lens.push_back(plan.positions[t] + 1);
  }
  c.block_table = plan.block_table;
  c.max_pages = plan.max_pages;
  c.page_size = plan.page_size;
  return c;
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
  std::vector<BatchPlan> chain_plans;  // run_uniform's `chains` (chain_plan), rewritten before each replay
  std::vector<DeviceBatch> chains;
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
                                                int64_t kind, int64_t chains, const Body& body, bool& owned) {
  Backend& backend = model_.backend();
  owned = false;
  BatchPlan plan = plan_batch(chunks, cache.page_size());
  widen_pages(plan, pow2_at_least(std::max(plan.max_pages, 1)));
  const int64_t T = plan.num_tokens();
  const bool capturable = options_.graphs && backend.can_capture(T);
  // Data-parallel attention's all-reduce exchange sizes every MoE layer's buffers by the step's rows a rank.
  const ExpertParallel* ep = model_.expert_parallel();
  const int64_t ep_rows = ep && ep->all_reduce() && ep->data_parallel() ? ep->step_rows() : 0;
  const Key key{plan.num_seqs(),
                int64_t(chunks[0].tokens.size()),
                chunks[0].all_logits,
                plan.max_pages,
                static_cast<const void*>(cache.layer(0).data),
                kind,
                ep_rows};
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
  // The chain batches are uploaded here, before any capture (an upload cannot be captured); their plans must
  // not move once uploaded (the CPU backend's batches alias them).
  auto upload_chains = [&](const BatchPlan& p, std::vector<BatchPlan>& plans,
                           std::vector<DeviceBatch>& batches) {
    plans.assign(size_t(chains), chain_plan(p));
    batches.clear();
    for (const BatchPlan& c : plans) batches.push_back(backend.upload_batch(c));
  };
  if (!g || g->refused) {
    ++stats_.eager;
    const DeviceBatch batch = backend.upload_batch(plan);
    const Tensor ids = model_.upload_tokens(chunks);
    std::vector<BatchPlan> chain_plans;
    std::vector<DeviceBatch> chain_batches;
    upload_chains(plan, chain_plans, chain_batches);
    return body(batch, ids, chain_batches);
  }
  g->last_use = ++clock_;
  if (!g->work) {
    g->plan = std::move(plan);
    g->batch = backend.upload_batch(g->plan);
    g->ids = model_.upload_tokens(chunks);
    upload_chains(g->plan, g->chain_plans, g->chains);
    backend.begin_capture();
    try {
      g->out = body(g->batch, g->ids, g->chains);
      g->work = backend.end_capture();
      ++stats_.captures;
    } catch (const Error&) {
      // An op that needs the host mid-step: nothing ran, so run the step eagerly and never try this shape again.
      backend.abort_capture();
      g->refused = true;
      g->out = Outputs{};
      ++stats_.refused;
      ++stats_.eager;
      return body(g->batch, g->ids, g->chains);
    } catch (...) {
      backend.abort_capture();
      graphs_.erase(key);
      throw;
    }
  } else {
    g->plan = std::move(plan);
    backend.update_batch(g->plan, g->batch);
    backend.copy_from_host(model_.token_ids(chunks).data(), g->ids);
    for (size_t c = 0; c < g->chains.size(); ++c) {
      g->chain_plans[c] = chain_plan(g->plan);
      backend.update_batch(g->chain_plans[c], g->chains[c]);
    }
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
      chunks, cache, 0, 0,
      [&](const DeviceBatch& batch, const TensorView& ids, const std::vector<DeviceBatch>&) {
        return Outputs{model_.run(chunks, batch, ids, cache), {}};
      },
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
  const int64_t S = int64_t(chunks.size()), R = int64_t(chunks[0].tokens.size()), T = S * R;
  const int64_t depth = std::max<int64_t>(R - 2, 0);  // chained drafts a sequence: N - 1
  // The chained passes' chunks: one token a sequence (its id comes from the device; this one is a
  // placeholder).
  std::vector<SequenceChunk> one(chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i) one[i] = {{0}, 0, {}, false};
  bool owned = false;
  Outputs o = run_uniform(
      chunks, cache, limit + 1, depth,
      [&](const DeviceBatch& batch, const TensorView& ids, const std::vector<DeviceBatch>& chains) {
        Outputs out;
        out.fwd = model_.run(chunks, batch, ids, cache);
        // Logits for every row: the chunks ask for all of them (or have one token each).
        MOE_CHECK(out.fwd.logits.dim(0) == T, "forward_speculative: {} logits rows for {} tokens",
                  out.fwd.logits.dim(0), T);
        out.ids = backend.alloc_uninitialized(DType::I32, {2 * T + depth * S});
        const TensorView all = out.ids.view();
        const TensorView verified = all.slice_rows(0, T), drafts = all.slice_rows(T, T);
        backend.argmax_rows(out.fwd.logits, limit, verified);
        const ForwardOutput mtp = model_.run_mtp(chunks, batch, verified, out.fwd.hidden, cache);
        backend.argmax_rows(mtp.logits, limit, drafts);
        if (depth == 0) return out;
        // Chain from each sequence's last kept row: its draft and the module's state there.
        Tensor rows = backend.alloc_uninitialized(DType::I32, {S});
        backend.kept_rows(ids, verified, rows);
        Tensor token = backend.alloc_uninitialized(DType::I32, {S});
        Tensor state = backend.alloc_uninitialized(mtp.hidden.dtype(), {S, mtp.hidden.dim(1)});
        backend.index_rows(drafts, rows, token);
        backend.index_rows(mtp.hidden, rows, state);
        TensorView tok = token.view(), h = state.view();
        ForwardOutput step;
        for (int64_t d = 0; d < depth; ++d) {
          const DeviceBatch& at = chains[size_t(d)];
          backend.chain_batch(batch, rows, int32_t(d + 1), at);
          step = model_.run_mtp(one, at, tok, h, cache);
          const TensorView next = all.slice_rows(2 * T + d * S, S);
          backend.argmax_rows(step.logits, limit, next);
          tok = next;
          h = step.hidden.view();
        }
        return out;
      },
      owned);
  std::vector<int32_t> host(size_t(o.ids.view().numel()));
  backend.copy_to_host(o.ids, host.data());
  SpeculativeIds r;
  r.verified.assign(host.begin(), host.begin() + T);
  r.drafts.assign(host.begin() + T, host.begin() + 2 * T);
  for (int64_t d = 0; d < depth; ++d)
    r.chained.emplace_back(host.begin() + 2 * T + d * S, host.begin() + 2 * T + (d + 1) * S);
  return r;
}

}  // namespace moe
