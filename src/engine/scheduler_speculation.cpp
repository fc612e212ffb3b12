// The scheduler's speculative decoding (scheduler.h, "Speculation"): whether a step runs fused on the device
// (can_fuse_speculation), that step (speculative_step: verification and next drafts from the step executor's
// ids), and the host-decided path's drafts (draft_tokens: the MTP module over the rows a step confirmed,
// chained N times).
#include <algorithm>

#include "backend/speculative_rule.h"
#include "engine/scheduler_sequence.h"

namespace moe {

bool Scheduler::can_fuse_speculation(const std::vector<SequenceChunk>& chunks,
                                     const std::vector<Sequence*>& owners) const {
  const size_t n = size_t(options_.speculative);
  if (n == 0 || !options_.fused_speculation || options_.run_step || !is_uniform_step(chunks)) return false;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const Sequence& s = *owners[i];
    // Decodes only (a prefill chunk needs its own MTP rows), each verifying its N drafts.
    if (!s.decoding() || s.drafts.size() != n || chunks[i].tokens.size() != n + 1) return false;
    // Plain greedy: the device's argmax is the whole decision (no edits of the row, no logprobs, no
    // constraint).
    const SamplingParams& p = s.sampler.params();
    if (p.temperature > 0.0f || !p.logit_bias.empty() || p.repetition_penalty != 1.0f ||
        p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f || s.req.constraint ||
        s.req.top_logprobs >= 0)
      return false;
  }
  return true;
}

void Scheduler::speculative_step(const std::vector<SequenceChunk>& chunks,
                                 const std::vector<Sequence*>& owners) {
  const int64_t limit = tokenizer_ ? std::max<int32_t>(tokenizer_->vocab_size(), 1) : 0;
  const StepExecutor::SpeculativeIds ids = executor_.forward_speculative(chunks, *cache_, limit);
  metrics_.steps++;
  metrics_.spec_fused_steps++;
  // Greedy verification from the ids alone: row j's token is verified[j]; the draft is kept when it equals
  // the main model's token at its position (Sampler::verify's greedy rule), as decide_tokens does from the
  // rows.
  const size_t n = chunks[0].tokens.size();
  std::vector<bool> was_decoding(chunks.size(), true);
  std::vector<Decided> decided(chunks.size());
  std::vector<size_t> rows(chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i) {
    rows[i] = i;
    Sequence& s = *owners[i];
    Decided& d = decided[i];
    for (size_t j = 0; j < n; ++j) {
      Decided::Token tok;
      tok.id = ids.verified[i * n + j];
      bool accepted = false;
      if (j < s.drafts.size() && j + 1 < n) {
        ++d.drafted;
        accepted = tok.id == s.drafts[j];
      }
      const bool ends =
          is_stop_token(s, tok.id) || int64_t(s.output.size() + d.tokens.size()) + 1 >= s.req.max_tokens;
      d.tokens.push_back(tok);
      if (accepted) ++d.accepted;
      if (!accepted || ends) break;
    }
  }
  finish_step(chunks, owners, was_decoding, decided, rows, {});
  // The next drafts: the MTP row of the last kept token (row `accepted`, which paired it with h there), then
  // the module's chain from that row. The device chained from the drafts equal to the verified tokens
  // (kept_rows); a sequence still running kept exactly those (only a stop or max_tokens ends the kept run
  // early, and ends the sequence), else it takes the first draft alone and the next step is decided on the
  // host.
  for (size_t i = 0; i < chunks.size(); ++i) {
    Sequence& s = *owners[i];
    s.drafts.clear();
    if (s.done) continue;
    const size_t kept = size_t(decided[i].accepted);
    s.drafts.push_back(ids.drafts[i * n + kept]);
    if (size_t(kept_drafts(chunks[i].tokens.data(), ids.verified.data() + i * n, int32_t(n))) != kept)
      continue;
    for (const std::vector<int32_t>& next : ids.chained) s.drafts.push_back(next[i]);
  }
}

void Scheduler::draft_tokens(const std::vector<SequenceChunk>& chunks, const std::vector<Sequence*>& owners,
                             const std::vector<bool>& was_decoding, const std::vector<Decided>& decided,
                             const ForwardOutput& fwd) {
  // MTP row j pairs the token at j + 1 with the main model's h[j], for every position whose latent the step
  // made whole: a prefill chunk's (the token after its last is the next prompt token, or the first one
  // decided), a decode's fed token and kept drafts (followed by the tokens decided).
  std::vector<SequenceChunk> mchunks;
  std::vector<Sequence*> mowners;
  std::vector<int32_t> hidden_rows;
  for (size_t i = 0, row = 0; i < chunks.size(); row += chunks[i].tokens.size(), ++i) {
    Sequence& s = *owners[i];
    s.drafts.clear();
    if (s.done) continue;
    const SequenceChunk& c = chunks[i];
    const Decided& d = decided[i];
    SequenceChunk m;
    m.start_pos = c.start_pos;
    m.pages = s.pages;
    if (was_decoding[i]) {
      if (int64_t(d.tokens.size()) < d.accepted + 1) continue;  // (it ended: never for a running sequence)
      for (int64_t k = 0; k <= d.accepted; ++k) m.tokens.push_back(d.tokens[size_t(k)].id);
    } else {
      m.tokens.assign(c.tokens.begin() + 1, c.tokens.end());
      const int64_t next = c.start_pos + int64_t(c.tokens.size());
      if (next < int64_t(s.req.prompt.size()))
        m.tokens.push_back(s.req.prompt[size_t(next)]);
      else if (!d.tokens.empty())
        m.tokens.push_back(d.tokens.front().id);
      else
        continue;
    }
    for (size_t k = 0; k < m.tokens.size(); ++k) hidden_rows.push_back(int32_t(row + k));
    mchunks.push_back(std::move(m));
    mowners.push_back(&s);
  }
  if (mchunks.empty()) return;
  Backend& backend = model_.backend();
  const int64_t D = model_.config().hidden_size, V = model_.config().vocab_size;
  Tensor hidden = fwd.hidden;
  bool every_row = int64_t(hidden_rows.size()) == fwd.hidden.dim(0);
  for (size_t k = 0; every_row && k < hidden_rows.size(); ++k) every_row = hidden_rows[k] == int32_t(k);
  if (!every_row) {
    hidden = backend.alloc_uninitialized(fwd.hidden.dtype(), {int64_t(hidden_rows.size()), D});
    backend.gather_rows(fwd.hidden, hidden_rows, hidden);
  }
  for (int32_t depth = 0; depth < options_.speculative; ++depth) {
    ForwardOutput out = model_.forward_mtp(mchunks, hidden.view(), *cache_);
    std::vector<float>& host = logits_host_;  // one row per chunk (its last)
    host.resize(size_t(out.logits.shape()[0] * V));
    backend.copy_to_host(out.logits, host.data());
    if (depth + 1 == options_.speculative) {
      for (size_t k = 0; k < mchunks.size(); ++k)
        mowners[k]->drafts.push_back(argmax(std::span<const float>(host).subspan(k * size_t(V), size_t(V))));
      break;
    }
    // The next draft: the module again, over the draft just made at the next position, its own output
    // standing in for the main model's state there (that latent is overwritten once the main model has seen
    // the token).
    std::vector<int32_t> last_rows;
    for (size_t k = 0, r = 0; k < mchunks.size(); ++k) {
      r += mchunks[k].tokens.size();
      last_rows.push_back(int32_t(r - 1));
      const int32_t draft = argmax(std::span<const float>(host).subspan(k * size_t(V), size_t(V)));
      mowners[k]->drafts.push_back(draft);
      mchunks[k].start_pos += int32_t(mchunks[k].tokens.size());
      mchunks[k].tokens = {draft};
    }
    hidden = backend.alloc_uninitialized(out.hidden.dtype(), {int64_t(last_rows.size()), D});
    backend.gather_rows(out.hidden, last_rows, hidden);
  }
}

}  // namespace moe
