#include "engine/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/scheduler_sequence.h"

namespace moe {

using Clock = std::chrono::steady_clock;

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::stop: return "stop";
    case FinishReason::length: return "length";
    case FinishReason::cancelled: return "cancelled";
    case FinishReason::error: return "error";
    default: return "none";
  }
}

// ---- EventSink ----

void EventSink::push(GenerationEvent e) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(e));
  }
  cv_.notify_all();
}

std::vector<GenerationEvent> EventSink::pop(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !queue_.empty(); });
  std::vector<GenerationEvent> out(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.end()));
  queue_.clear();
  return out;
}

// ---- StopMatcher ----

std::string StopMatcher::feed(std::string_view text) {
  if (stopped_) return "";
  pending_.append(text);
  size_t best = std::string::npos;
  for (const auto& s : stops_)
    if (!s.empty()) best = std::min(best, pending_.find(s));
  if (best != std::string::npos) {
    std::string out = pending_.substr(0, best);
    pending_.clear();
    stopped_ = true;
    return out;
  }
  // Hold back the longest suffix that is a proper prefix of a stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    for (size_t k = std::min(s.size() ? s.size() - 1 : 0, pending_.size()); k > hold; --k) {
      if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopMatcher::flush() {
  std::string out = stopped_ ? std::string() : std::move(pending_);
  pending_.clear();
  return out;
}

// ---- RequestHandle ----

void RequestHandle::cancel() {
  if (!cancelled_.exchange(true)) scheduler_->wake();
}

// ---- Scheduler ----

Scheduler::Scheduler(DeepseekV3& model, const Tokenizer* tokenizer, SchedulerOptions options)
    : model_(model),
      executor_(model),
      tokenizer_(tokenizer),
      options_(options),
      max_context_(std::min(options.max_context > 0 ? std::min(options.max_context, model.config().max_position_embeddings)
                                                    : model.config().max_position_embeddings,
                            pages_for(options.cache_tokens, options.page_size) / std::max(options.cache_partitions, 1) *
                                options.page_size)),
      allocator_(pages_for(options.cache_tokens, options.page_size), options.cache_partitions) {
  MOE_CHECK(options.page_size > 0 && options.cache_tokens > 0, "scheduler: cache size and page size must be > 0");
  MOE_CHECK(options.cache_partitions == 1 || (!options.prefix_cache && options.run_step),
            "scheduler: cache partitions (data-parallel attention) need the prefix cache off and a run_step");
  MOE_CHECK(!options.run_step || options.speculative == 0, "scheduler: run_step with speculative decoding");
  if (!options.run_step)
    cache_.emplace(model.config(), model.backend(), pages_for(options.cache_tokens, options.page_size),
                   options.page_size, model.cache_layers());
  if (options.prefix_cache) prefix_.emplace(allocator_, options.page_size);
  MOE_CHECK(options.max_batch > 0, "scheduler: max_batch must be > 0");
  MOE_CHECK(options.speculative >= 0, "scheduler: speculative must be >= 0");
  MOE_CHECK(options.speculative == 0 || model.has_mtp(),
            "speculative decoding needs the model's MTP module (load it with load_mtp; the checkpoint needs "
            "num_nextn_predict_layers >= 1)");
  // Every decoding sequence feeds 1 + speculative tokens a step: the budget keeps room for a full batch.
  const int32_t per_seq = 1 + options_.speculative;
  if (options_.max_step_tokens < options_.max_batch * per_seq) options_.max_step_tokens = options_.max_batch * per_seq;
  if (tokenizer) eos_ = tokenizer->eos_id();
  if (!eos_ && model.config().eos_token_id) eos_ = int32_t(*model.config().eos_token_id);
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Scheduler::wake() {
  { std::lock_guard lock(mu_); }
  cv_.notify_all();
}

std::shared_ptr<RequestHandle> Scheduler::submit(GenerationRequest req, std::shared_ptr<EventSink> sink,
                                                 int32_t index) {
  MOE_CHECK(sink != nullptr, "submit: no event sink");
  MOE_CHECK(!req.prompt.empty(), "the prompt is empty");
  const int64_t vocab = model_.config().vocab_size;
  for (int32_t t : req.prompt) MOE_CHECK(t >= 0 && t < vocab, "prompt token id {} is outside the vocabulary (0..{})", t, vocab - 1);
  MOE_CHECK(req.max_tokens >= 0, "max_tokens must be at least 0");
  const int64_t total = int64_t(req.prompt.size()) + req.max_tokens;
  MOE_CHECK(int64_t(req.prompt.size()) < max_context_,
            "the prompt has {} tokens; this model's context is {} tokens", req.prompt.size(), max_context_);
  MOE_CHECK(total <= max_context_,
            "the prompt ({} tokens) plus max_tokens ({}) exceeds the context of {} tokens", req.prompt.size(),
            req.max_tokens, max_context_);
  // Verification writes up to `speculative` drafts' latents past the last token.
  const int64_t pages = pages_for(total + options_.speculative, options_.page_size);
  MOE_CHECK(pages <= allocator_.partition_pages(),
            "the prompt ({} tokens) plus max_tokens ({}) plus {} speculative positions needs more cache than the "
            "server has ({} tokens{})",
            req.prompt.size(), req.max_tokens, options_.speculative, allocator_.partition_pages() * options_.page_size,
            allocator_.partitions() > 1 ? " per data-parallel rank" : "");
  const auto& sp = req.sampling;
  MOE_CHECK(std::isfinite(sp.temperature) && sp.temperature >= 0, "temperature must be >= 0");
  MOE_CHECK(std::isfinite(sp.top_p) && sp.top_p > 0 && sp.top_p <= 1, "top_p must be in (0, 1]");
  MOE_CHECK(sp.top_k >= 0, "top_k must be >= 0");
  MOE_CHECK(std::isfinite(sp.min_p) && sp.min_p >= 0 && sp.min_p <= 1, "min_p must be in [0, 1]");
  MOE_CHECK(std::isfinite(sp.repetition_penalty) && sp.repetition_penalty > 0, "repetition_penalty must be > 0");
  MOE_CHECK(std::isfinite(sp.frequency_penalty) && std::isfinite(sp.presence_penalty), "penalties must be finite");
  MOE_CHECK(req.top_logprobs <= 20, "top_logprobs must be at most 20");
  MOE_CHECK(req.prompt_logprobs <= 20, "prompt_logprobs must be at most 20");
  for (const auto& s : req.stop) MOE_CHECK(!s.empty(), "stop strings must not be empty");
  MOE_CHECK(req.stop.empty() || tokenizer_ != nullptr, "stop strings need a tokenizer");

  auto seq = std::make_unique<Sequence>(std::move(req), tokenizer_);
  const uint64_t id = next_id_++;
  seq->handle = std::shared_ptr<RequestHandle>(new RequestHandle(this, id));
  seq->sink = std::move(sink);
  seq->index = index;
  seq->pages_needed = pages;
  seq->submitted = Clock::now();
  auto handle = seq->handle;
  metrics_.requests_submitted++;
  {
    std::lock_guard lock(mu_);
    MOE_CHECK(!stop_, "the scheduler is shutting down");
    waiting_.push_back(std::move(seq));
  }
  cv_.notify_all();
  return handle;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  {
    std::lock_guard lock(mu_);
    s.waiting = int64_t(waiting_.size());
  }
  s.running = running_count_.load();
  s.pages_total = allocator_.total_pages();
  s.pages_used = pages_used_.load();
  s.pages_cached = pages_cached_.load();
  s.pages_evictable = pages_evictable_.load();
  s.pages_free = s.pages_total - s.pages_used - s.pages_evictable;
  s.page_size = options_.page_size;
  return s;
}

void Scheduler::update_page_stats() {
  const int64_t evictable = prefix_ ? prefix_->evictable_pages() : 0;
  pages_evictable_ = evictable;
  pages_cached_ = prefix_ ? prefix_->indexed_pages() : 0;
  pages_used_ = allocator_.used_pages() - evictable;
  if (prefix_) metrics_.prefix_evicted_pages = uint64_t(prefix_->evicted_pages());
}

void Scheduler::index_pages(Sequence& s, std::span<const int32_t> pending) {
  const int64_t ps = options_.page_size, full = s.written / ps;
  if (!prefix_ || s.index_stopped || full <= s.indexed) return;
  // The tokens whose latents fill the pages: the prompt, then the output tokens fed back so far.
  std::vector<int32_t> tokens;
  std::span<const int32_t> view = s.req.prompt;
  if (full * ps > int64_t(s.req.prompt.size())) {
    tokens = s.req.prompt;
    tokens.insert(tokens.end(), s.output.begin(), s.output.end());
    tokens.insert(tokens.end(), pending.begin(), pending.end());
    view = tokens;
  }
  const int64_t n = prefix_->insert(view, s.pages, s.indexed, full);
  s.indexed += n;
  if (s.indexed < full) s.index_stopped = true;
}

void Scheduler::finish(Sequence& s, FinishReason reason, const std::string& error) {
  s.done = true;
  if (!s.pages.empty()) {
    allocator_.release(s.pages);  // pages the prefix cache indexed stay there, whole (see index_pages)
    s.pages.clear();
    update_page_stats();
  }
  if (reason == FinishReason::cancelled) metrics_.requests_cancelled++;
  else if (reason == FinishReason::error) metrics_.requests_failed++;
  else metrics_.requests_finished++;
  if (reason == FinishReason::cancelled || reason == FinishReason::error) {
    GenerationEvent e;
    e.index = s.index;
    e.finish = reason;
    e.error = error;
    e.prompt_tokens = int32_t(s.req.prompt.size());
    e.completion_tokens = int32_t(s.output.size());
    e.cached_tokens = int32_t(s.cached_tokens);
    s.sink->push(std::move(e));
  }
}

void Scheduler::admit(std::vector<std::unique_ptr<Sequence>>& running) {
  std::lock_guard lock(mu_);
  while (!waiting_.empty()) {
    auto& s = waiting_.front();
    if (s->handle->cancelled_) {
      finish(*s, FinishReason::cancelled);
      waiting_.pop_front();
      continue;
    }
    if (int32_t(running.size()) >= options_.max_batch) break;
    // Reuse the longest cached prefix (whole pages, never the last prompt token); allocate the rest, evicting
    // pages held only by the prefix cache when the free ones are too few.
    const int64_t prompt = int64_t(s->req.prompt.size());
    // A scoring request computes every position (it needs each one's logits): it reuses nothing, but indexes its
    // pages like any other.
    std::vector<int32_t> reused;
    if (prefix_ && !s->scoring()) reused = prefix_->match(s->req.prompt, (prompt - 1) / options_.page_size);
    const int64_t fresh = s->pages_needed - int64_t(reused.size());
    auto pages = prefix_ ? prefix_->allocate(fresh) : allocator_.allocate_in(fresh, allocator_.emptiest_partition());
    if (!pages) {  // FIFO: the head waits for pages; later requests don't overtake it
      allocator_.release(reused);
      break;
    }
    s->pages = std::move(reused);
    s->pages.insert(s->pages.end(), pages->begin(), pages->end());
    s->indexed = int64_t(s->pages.size()) - fresh;
    s->prefilled = s->written = s->cached_tokens = s->indexed * options_.page_size;
    update_page_stats();
    metrics_.prompt_tokens += uint64_t(prompt);
    if (prefix_ && !s->scoring()) {
      metrics_.prefix_lookups++;
      if (s->cached_tokens > 0) metrics_.prefix_hits++;
      metrics_.cached_prompt_tokens += uint64_t(s->cached_tokens);
    }
    running.push_back(std::move(s));
    waiting_.pop_front();
  }
  running_count_ = int64_t(running.size());
}

void Scheduler::mask_padding(std::span<float> row) const {
  // Ids the tokenizer has no token for (a model vocabulary padded past the tokenizer's) can never be sampled.
  if (tokenizer_)
    for (size_t i = size_t(std::max<int32_t>(tokenizer_->vocab_size(), 1)); i < row.size(); ++i)
      row[i] = -std::numeric_limits<float>::infinity();
}

TokenLogprob Scheduler::row_logprob(std::span<float> row, int32_t token, int32_t top) const {
  mask_padding(row);
  const std::vector<float> logprobs = Sampler::log_softmax(row);
  TokenLogprob lp;
  lp.token = token;
  lp.logprob = logprobs[size_t(token)];
  for (int32_t id : top_ids(logprobs, size_t(top))) lp.top.emplace_back(id, logprobs[size_t(id)]);
  return lp;
}

bool Scheduler::is_stop_token(const Sequence& s, int32_t token) const {
  return (!s.req.ignore_eos && eos_ && token == *eos_) ||
         std::find(s.req.stop_token_ids.begin(), s.req.stop_token_ids.end(), token) != s.req.stop_token_ids.end();
}

void Scheduler::decide_tokens(Sequence& s, std::span<float> rows, Decided& out) const {
  const size_t V = size_t(model_.config().vocab_size), n_rows = rows.size() / V;
  // The output as it grows by this step's tokens (penalties see the tokens before each row).
  std::vector<int32_t> history;
  std::span<const int32_t> seen = s.output;
  if (n_rows > 1) {
    history.reserve(s.output.size() + n_rows);
    history = s.output;
  }
  for (size_t j = 0; j < n_rows; ++j) {
    const std::span<float> row = rows.subspan(j * V, V);
    // Ids the tokenizer has no token for (a model vocabulary padded past the tokenizer's) can never be sampled.
    if (tokenizer_)
      for (size_t i = size_t(std::max<int32_t>(tokenizer_->vocab_size(), 1)); i < row.size(); ++i)
        row[i] = -std::numeric_limits<float>::infinity();
    std::vector<float> logprobs;  // the model's distribution, before penalties and temperature
    if (s.req.top_logprobs >= 0) logprobs = Sampler::log_softmax(row);
    Decided::Token tok;
    bool accepted = false;
    try {
      if (s.req.constraint) {
        s.req.constraint->mask(row);
        if (std::none_of(row.begin(), row.end(), [](float v) { return v > -std::numeric_limits<float>::infinity(); }))
          throw Error("the output constraint allows no next token");
      }
      if (j < s.drafts.size() && j + 1 < n_rows) {
        ++out.drafted;
        tok.id = s.sampler.verify(row, s.req.prompt, seen, s.drafts[j], accepted);
      } else {
        tok.id = s.sampler.sample(row, s.req.prompt, seen);
      }
      if (s.req.constraint) {
        s.req.constraint->accept(tok.id);
        tok.constraint_complete = s.req.constraint->complete();
      }
    } catch (const std::exception& ex) {
      out.error = ex.what();
      return;
    }
    if (s.req.top_logprobs >= 0) {
      TokenLogprob& lp = tok.logprob.emplace();
      lp.token = tok.id;
      lp.logprob = logprobs[size_t(tok.id)];
      for (int32_t id : top_ids(logprobs, size_t(s.req.top_logprobs))) lp.top.emplace_back(id, logprobs[size_t(id)]);
    }
    const bool ends = tok.constraint_complete || is_stop_token(s, tok.id) ||
                      int64_t(s.output.size() + out.tokens.size()) + 1 >= s.req.max_tokens;
    out.tokens.push_back(std::move(tok));
    if (accepted) ++out.accepted;
    if (!accepted || ends) return;
    history.push_back(out.tokens.back().id);
    seen = history;
  }
}

void Scheduler::sample_on_device(const TensorView& logits, const std::vector<size_t>& rows,
                                 const std::vector<Sequence*>& owners, std::vector<int32_t>& tokens,
                                 std::vector<std::optional<TokenLogprob>>& logprobs, std::vector<std::string>& errors) {
  const int64_t vocab = logits.shape[1];
  const float none = -std::numeric_limits<float>::infinity();
  std::vector<SampleRow> sample_rows;
  std::vector<size_t> which;                        // sample_rows[k] is rows[which[k]]
  std::vector<std::vector<uint32_t>> masks(rows.size());
  std::vector<float> probe;
  for (size_t r = 0; r < rows.size(); ++r) {
    Sequence& s = *owners[rows[r]];
    SampleRow row;
    row.row = int64_t(rows[r]);
    row.params = &s.sampler.params();
    row.prompt = s.req.prompt;
    row.output = s.output;
    if (tokenizer_) row.vocab_limit = std::max<int32_t>(tokenizer_->vocab_size(), 1);
    row.top_logprobs = s.req.top_logprobs;
    if (s.req.constraint) {  // the allowed set, read off the constraint's mask of a probe row
      try {
        probe.assign(size_t(vocab), 0.0f);
        s.req.constraint->mask(probe);
        auto& words = masks[r];
        words.assign(size_t((vocab + 31) / 32), 0u);
        bool any = false;
        for (int64_t t = 0; t < std::min<int64_t>(vocab, row.vocab_limit); ++t)
          if (probe[size_t(t)] > none) {
            words[size_t(t >> 5)] |= 1u << (t & 31);
            any = true;
          }
        if (!any) throw Error("the output constraint allows no next token");
        row.allowed = words;
      } catch (const std::exception& ex) {
        errors[r] = ex.what();
        continue;
      }
    }
    row.u = row.params->temperature > 0.0f ? s.sampler.draw() : 0.0;
    sample_rows.push_back(row);
    which.push_back(r);
  }
  std::vector<SampleResult> results;
  model_.backend().sample(logits, sample_rows, results);
  for (size_t k = 0; k < which.size(); ++k) {
    const size_t r = which[k];
    tokens[r] = results[k].token;
    if (sample_rows[k].top_logprobs >= 0) {
      TokenLogprob& lp = logprobs[r].emplace();
      lp.token = results[k].token;
      lp.logprob = results[k].logprob;
      lp.top = std::move(results[k].top);
    }
  }
}

void Scheduler::emit_token(Sequence& s, int32_t token, std::optional<TokenLogprob> logprob,
                           bool constraint_complete) {
  GenerationEvent e;
  e.index = s.index;
  s.output.push_back(token);
  metrics_.generated_tokens++;
  const auto now = Clock::now();
  if (s.output.size() == 1) metrics_.ttft.observe(std::chrono::duration<double>(now - s.submitted).count());
  else metrics_.inter_token.observe(std::chrono::duration<double>(now - s.last_token).count());
  s.last_token = now;
  e.tokens = {token};
  if (logprob) e.logprobs.push_back(std::move(*logprob));
  if (s.output.size() == 1) e.prompt_logprobs = std::move(s.prompt_logprobs);
  const bool stop_token = is_stop_token(s, token);
  FinishReason reason = FinishReason::none;
  if (stop_token) {
    if (s.decoder) e.text = s.stop.feed(s.decoder->flush());
    if (!s.stop.stopped()) e.text += s.stop.flush();
    reason = FinishReason::stop;
  } else {
    if (s.decoder) e.text = s.stop.feed(s.decoder->push(token));
    if (s.stop.stopped()) {
      reason = FinishReason::stop;
    } else if (constraint_complete) {
      if (s.decoder) e.text += s.stop.feed(s.decoder->flush());
      if (!s.stop.stopped()) e.text += s.stop.flush();
      reason = FinishReason::stop;
    } else if (int32_t(s.output.size()) >= s.req.max_tokens) {
      if (s.decoder) e.text += s.stop.feed(s.decoder->flush());
      if (!s.stop.stopped()) e.text += s.stop.flush();
      reason = s.stop.stopped() ? FinishReason::stop : FinishReason::length;
    }
  }
  e.finish = reason;
  e.prompt_tokens = int32_t(s.req.prompt.size());
  e.completion_tokens = int32_t(s.output.size());
  e.cached_tokens = int32_t(s.cached_tokens);
  if (reason != FinishReason::none) finish(s, reason);
  s.sink->push(std::move(e));
}

void Scheduler::finish_scoring(Sequence& s) {
  GenerationEvent e;
  e.index = s.index;
  e.finish = FinishReason::length;
  e.prompt_logprobs = std::move(s.prompt_logprobs);
  e.prompt_tokens = int32_t(s.req.prompt.size());
  e.cached_tokens = int32_t(s.cached_tokens);
  finish(s, FinishReason::length);
  s.sink->push(std::move(e));
}

std::vector<int64_t> Scheduler::prefill_shares(const std::vector<Sequence*>& prefilling, int64_t budget) const {
  // A scoring sequence asks for at most max_prompt_logprob_rows (its rows all come to the host); what it leaves
  // goes to the others.
  std::vector<int64_t> need(prefilling.size());
  for (size_t i = 0; i < prefilling.size(); ++i) {
    need[i] = int64_t(prefilling[i]->req.prompt.size()) - prefilling[i]->prefilled;
    if (prefilling[i]->scoring())
      need[i] = std::min<int64_t>(need[i], std::max<int32_t>(options_.max_prompt_logprob_rows, 1));
  }
  return share_budget(need, budget);
}

std::vector<int64_t> share_budget(const std::vector<int64_t>& need, int64_t budget) {
  std::vector<int64_t> give(need.size(), 0);
  std::vector<size_t> order(need.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return need[a] < need[b]; });
  int64_t left = std::max<int64_t>(budget, 0);
  size_t others = order.size();
  for (size_t i : order) {  // smallest needs first: the equal share only grows as they take less than it
    const int64_t g = std::min(need[i], left / int64_t(others--));
    give[i] = g;
    left -= g;
  }
  return give;
}

void Scheduler::step(std::vector<std::unique_ptr<Sequence>>& running) {
  std::vector<SequenceChunk> chunks;
  std::vector<Sequence*> owners;
  int64_t budget = options_.max_step_tokens;
  for (auto& s : running) {
    if (!s->decoding()) continue;
    SequenceChunk c;
    c.tokens = {s->output.back()};
    c.tokens.insert(c.tokens.end(), s->drafts.begin(), s->drafts.end());
    c.all_logits = !s->drafts.empty();  // speculation: every row verifies a draft (or gives the token after all)
    c.start_pos = int32_t(int64_t(s->req.prompt.size()) + int64_t(s->output.size()) - 1);
    c.pages = s->pages;
    budget -= int64_t(c.tokens.size());
    chunks.push_back(std::move(c));
    owners.push_back(s.get());
  }
  // Prefill chunks share what is left of the budget (water-filling): every prefilling sequence gets an equal
  // share, those needing less than theirs take only what they need, and the rest is split again among the others.
  // Bound: decodes take at most (max_batch - n) * (1 + speculative) tokens, and
  // max_step_tokens >= max_batch * (1 + speculative), so each of the n prefilling sequences gets at least
  // floor((max_step_tokens - decodes) / n) >= 1 tokens every step, and a prompt of P tokens admitted next to any
  // long ones starts decoding within ceil(P * n / (max_step_tokens - decodes)) steps, however long theirs are
  // (before: the oldest prompt took the whole budget, so a 4-token request waited for a 60k-token prefill).
  std::vector<Sequence*> prefilling;
  for (auto& s : running)
    if (!s->decoding()) prefilling.push_back(s.get());
  const auto share = prefill_shares(prefilling, budget);
  for (size_t k = 0; k < prefilling.size(); ++k) {
    Sequence* s = prefilling[k];
    const int64_t n = share[k];
    if (n <= 0) continue;
    SequenceChunk c;
    c.tokens.assign(s->req.prompt.begin() + std::ptrdiff_t(s->prefilled),
                    s->req.prompt.begin() + std::ptrdiff_t(s->prefilled + n));
    c.start_pos = int32_t(s->prefilled);
    c.pages = s->pages;
    c.all_logits = s->scoring();  // row j: the distribution of the token after position start_pos + j
    chunks.push_back(std::move(c));
    owners.push_back(s);
  }
  if (chunks.empty()) return;

  Backend& backend = model_.backend();
  if (options_.on_step) options_.on_step(chunks);
  if (can_fuse_speculation(chunks, owners)) {
    speculative_step(chunks, owners);
    return;
  }
  ForwardOutput fwd = options_.run_step ? options_.run_step(chunks) : executor_.forward(chunks, *cache_);
  const int64_t vocab = model_.config().vocab_size;
  // Rows: one per chunk, or one per token of a chunk with all_logits (a speculating decode, or a scoring prefill
  // chunk); a chunk's last row is its last token's.
  std::vector<size_t> first_row(chunks.size());
  size_t nrows = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    first_row[i] = nrows;
    nrows += chunks[i].all_logits ? chunks[i].tokens.size() : 1;
  }
  MOE_CHECK(fwd.logits.shape()[0] == int64_t(nrows) && fwd.logits.shape()[1] == vocab,
            "scheduler: unexpected logits shape");
  metrics_.steps++;

  // Chunks whose sequence now decides tokens: decodes, and prefill chunks that end the prompt (a chunk short of
  // the end needs no token); the prompt positions whose next token a scoring chunk's rows give (the row of the
  // prompt's last token is the deciding row, not a prompt token's); scoring sequences whose prompt is done and
  // that generate nothing (max_tokens 0).
  std::vector<size_t> rows;
  std::vector<bool> was_decoding(chunks.size());
  struct PromptRow {
    Sequence* seq;
    size_t row;
    int64_t target;  // the prompt token whose logprob it gives (position >= 1)
  };
  std::vector<PromptRow> prompt_rows;
  std::vector<Sequence*> scored;
  for (size_t i = 0; i < chunks.size(); ++i) {
    Sequence& s = *owners[i];
    was_decoding[i] = s.decoding();
    if (!was_decoding[i]) {
      s.prefilled += int64_t(chunks[i].tokens.size());
      if (chunks[i].all_logits)
        for (size_t j = 0; j < chunks[i].tokens.size(); ++j) {
          const int64_t target = int64_t(chunks[i].start_pos) + int64_t(j) + 1;
          if (target < int64_t(s.req.prompt.size())) prompt_rows.push_back({&s, first_row[i] + j, target});
        }
    }
    if (s.decoding()) {
      if (s.req.max_tokens == 0) scored.push_back(&s);
      else rows.push_back(i);
    }
  }
  // The rows a chunk decides from: every row of a speculating decode (its drafts are verified in order), else
  // its last row.
  auto decide_rows = [&](size_t i) -> std::pair<size_t, size_t> {  // first row, count
    if (was_decoding[i] && chunks[i].all_logits) return {first_row[i], chunks[i].tokens.size()};
    return {first_row[i] + (chunks[i].all_logits ? chunks[i].tokens.size() - 1 : 0), 1};
  };
  // Deciding a row costs from one read of it (greedy) to one exp per logit (about a millisecond at a 160k
  // vocabulary). On a device backend with one row per chunk (no drafts to verify, no prompt to score) the rows
  // are sampled there in one launch and only ids come back; otherwise the rows are copied to the host and
  // sequences are decided in parallel (a sequence's rows in order), beside the scoring rows' logprobs. Then their
  // events are sent in order.
  std::vector<Decided> decided(chunks.size());
  if (options_.device_sampling && !backend.device().is_host() && nrows == chunks.size()) {
    std::vector<int32_t> tokens(rows.size(), -1);
    std::vector<std::optional<TokenLogprob>> logprobs(rows.size());
    std::vector<std::string> errors(rows.size());
    sample_on_device(fwd.logits, rows, owners, tokens, logprobs, errors);
    for (size_t r = 0; r < rows.size(); ++r) {
      Sequence& s = *owners[rows[r]];
      Decided& d = decided[rows[r]];
      if (!errors[r].empty()) {
        d.error = errors[r];
        continue;
      }
      Decided::Token tok;
      tok.id = tokens[r];
      tok.logprob = std::move(logprobs[r]);
      try {
        if (s.req.constraint) {
          s.req.constraint->accept(tok.id);
          tok.constraint_complete = s.req.constraint->complete();
        }
      } catch (const std::exception& ex) {
        d.error = ex.what();
        continue;
      }
      d.tokens.push_back(std::move(tok));
    }
  } else if (!rows.empty() || !prompt_rows.empty()) {
    std::vector<float>& host = logits_host_;
    host.resize(size_t(fwd.logits.shape()[0] * vocab));
    backend.copy_to_host(fwd.logits, host.data());
    // Jobs [0, rows) decide; jobs [rows, rows + prompt_rows) score prompt tokens. No two touch the same row or slot.
    const int64_t jobs = int64_t(rows.size() + prompt_rows.size());
    ThreadPool::global().parallel_for(jobs, [&](int64_t begin, int64_t end, int) {
      for (int64_t r = begin; r < end; ++r) {
        if (size_t(r) >= rows.size()) {
          const PromptRow& p = prompt_rows[size_t(r) - rows.size()];
          const std::span<float> row = std::span<float>(host).subspan(p.row * size_t(vocab), size_t(vocab));
          p.seq->prompt_logprobs[size_t(p.target - 1)] =
              row_logprob(row, p.seq->req.prompt[size_t(p.target)], p.seq->req.prompt_logprobs);
          continue;
        }
        const size_t i = rows[size_t(r)];
        const auto [first, count] = decide_rows(i);
        const std::span<float> block = std::span<float>(host).subspan(first * size_t(vocab), count * size_t(vocab));
        decide_tokens(*owners[i], block, decided[i]);
      }
    });
  }
  finish_step(chunks, owners, was_decoding, decided, rows, scored);
  if (options_.speculative > 0) draft_tokens(chunks, owners, was_decoding, decided, fwd);
}

void Scheduler::finish_step(const std::vector<SequenceChunk>& chunks, const std::vector<Sequence*>& owners,
                            const std::vector<bool>& was_decoding, std::vector<Decided>& decided,
                            const std::vector<size_t>& rows, const std::vector<Sequence*>& scored) {
  // Latents now whole: a prefill chunk's, a decode's fed token and the drafts kept after it (a rejected draft's
  // latent stays past `written`, to be overwritten).
  std::vector<int32_t> pending;
  for (size_t i = 0; i < chunks.size(); ++i) {
    Sequence& s = *owners[i];
    const Decided& d = decided[i];
    s.written = chunks[i].start_pos + (was_decoding[i] ? 1 + d.accepted : int64_t(chunks[i].tokens.size()));
    pending.clear();
    for (const auto& t : d.tokens) pending.push_back(t.id);
    index_pages(s, pending);
  }
  // Indexing only adds pages the sequences hold (nothing becomes evictable, nothing is allocated or freed).
  if (prefix_) pages_cached_ = prefix_->indexed_pages();
  for (Sequence* s : scored) finish_scoring(*s);
  for (size_t i : rows) {
    Sequence& s = *owners[i];
    Decided& d = decided[i];
    if (was_decoding[i] && !s.drafts.empty()) {
      metrics_.spec_verifications++;
      metrics_.spec_drafted += uint64_t(d.drafted);
      metrics_.spec_accepted += uint64_t(d.accepted);
    }
    try {
      for (auto& t : d.tokens) {
        if (s.done) break;  // a stop string, or the constraint done: the rest is dropped
        emit_token(s, t.id, std::move(t.logprob), t.constraint_complete);
      }
    } catch (const std::exception& ex) {
      if (!s.done) finish(s, FinishReason::error, ex.what());
    }
    // A failure fails this request alone (e.g. a token its tokenizer cannot decode).
    if (!d.error.empty() && !s.done) finish(s, FinishReason::error, d.error);
  }
}

void Scheduler::loop() {
  std::vector<std::unique_ptr<Sequence>> running;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !waiting_.empty() || !running.empty(); });
      if (stop_) break;
    }
    for (auto& s : running)
      if (s->handle->cancelled_ && !s->done) finish(*s, FinishReason::cancelled);
    std::erase_if(running, [](const auto& s) { return s->done; });
    admit(running);
    if (running.empty()) {
      // Nothing admissible (the waiting head was cancelled or needs pages that will never free up: impossible,
      // since submit() refuses requests larger than the cache). Avoid spinning.
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(5));
      continue;
    }
    try {
      step(running);
    } catch (const std::exception& e) {
      for (auto& s : running)
        if (!s->done) finish(*s, FinishReason::error, e.what());
    }
    std::erase_if(running, [](const auto& s) { return s->done; });
    running_count_ = int64_t(running.size());
  }
  for (auto& s : running)
    if (!s->done) finish(*s, FinishReason::cancelled);
  std::lock_guard lock(mu_);
  for (auto& s : waiting_) finish(*s, FinishReason::cancelled);
  waiting_.clear();
  running_count_ = 0;
}

}  // namespace moe
