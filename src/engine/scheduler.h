#pragma once
// The serving engine core shared by every front end: a request queue and one scheduler thread doing continuous
// batching. Every step is one DeepseekV3::forward call carrying a chunk of every running sequence: one token for
// each decoding sequence, and prompt chunks (chunked prefill) for admitted sequences up to a per-step token budget,
// so a long prompt never stalls running decodes. The prefill budget is shared among the prefilling sequences
// (share_budget), so a long prompt does not stall a short one admitted after it either. Requests join and leave the batch between any two steps.
//
// Cache: the latent cache is split into fixed-size pages (PageAllocator). A request is admitted only when the
// pages for its whole prompt + max_tokens are free (or held only by the prefix cache, which gives them up), and
// they are reserved for it; otherwise it waits in the queue (FIFO), so a step can never run out of cache. A finished or cancelled request's pages are released before the
// next step is planned.
//
// Prefix cache (engine/prefix_cache.h, SchedulerOptions::prefix_cache): full pages of prompt and output tokens
// are indexed as soon as their latents are written, and stay indexed after their request ends (least recently
// used first out when admission needs the room, so pages held only by the index never keep a request waiting).
// Admission reuses the pages of the longest indexed prefix of the prompt (shared, reference-counted) and
// prefills only the rest; at most (prompt - 1) / page_size pages are reused, so the last prompt token is always
// computed (its logits give the first token) and a sequence only ever writes pages no one else reads. A request
// for prompt logprobs (scoring) reuses nothing, since it needs the logits of every prompt position.
//
// Speculation (SchedulerOptions::speculative = N > 0): every decoding sequence carries N draft tokens from the
// model's MTP module. Its decode chunk is [last token, draft 1..N] with logits for every row, so the main model
// verifies all drafts in the step's one forward. Rows are decided in order (engine/sampler.h, Sampler::verify):
// a greedy row keeps the draft when it is the argmax, a sampled row by the standard acceptance rule, so the
// output is distributed exactly as without speculation (greedy: identical); the first rejected row's token (or,
// all drafts kept, the last row's) ends the sequence's tokens for the step. Penalties, token constraints (each
// row is masked after the constraint has accepted the rows before it), logprobs, stop tokens and max_tokens are
// applied row by row as for single tokens. The cache positions past the last kept one hold rejected drafts'
// latents: `written` stops before them and the next step overwrites them (they lie in the sequence's own
// pages: shared prefix pages are all below `written`). Then the MTP module runs over the rows just confirmed
// (t[j+1] with the main model's h[j], prompt chunks included, so its cache layer stays complete) and its last
// row's argmax is the next draft; further drafts chain the module on its own output. A request reserves pages
// for N positions past prompt + max_tokens.
//
// Text: with a tokenizer, each request's tokens are decoded incrementally (StreamingDecoder) and stop strings are
// matched on the text, across token boundaries: text that might be the start of a stop string is held back until
// it is known not to be. Uses only the Backend/DeepseekV3 interfaces, so it runs on any backend.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "engine/metrics.h"
#include "engine/page_allocator.h"
#include "engine/prefix_cache.h"
#include "engine/sampler.h"
#include "engine/step_executor.h"
#include "engine/token_constraint.h"
#include "model/deepseek_v3.h"
#include "tokenizer/tokenizer.h"

namespace moe {

struct SchedulerOptions {
  int64_t cache_tokens = 65536;   // latent cache capacity, in tokens (rounded up to whole pages)
  int64_t page_size = 16;
  int32_t max_batch = 64;         // most sequences in the running batch
  int32_t max_step_tokens = 512;  // per-step token budget (decodes first, then prefill chunks)
  int64_t max_context = 0;        // longest prompt + completion; 0: the model's max_position_embeddings (at most the cache)
  bool prefix_cache = true;       // reuse the cached latents of prompt prefixes seen before (see above)
  // MTP speculative decoding (see "Speculation" above): draft tokens per sequence and step, 0 = off. Needs a
  // model loaded with its MTP module.
  int32_t speculative = 0;
  // A step whose sequences are all decoding plain-greedy requests (no penalties, logit_bias, constraint or
  // logprobs), each with its N drafts, runs fused (StepExecutor::forward_speculative): the main model's
  // verification, its rows' argmax, the MTP module over them and its argmax, and with N > 1 the module
  // chained from each sequence's last kept row, in one captured step, only ids back to the host. Off, or for
  // any other step: the rows decided on the host and the MTP module run after the step (draft_tokens); both
  // give the same drafts. On by default since its CUDA graph path ran on an H200 (2026-12-02,
  // scripts/gpu/spec.sh, one draft: same tokens as the host-decided path, 1.45-2.8x its tokens/s); off is the
  // host-decided path, kept for A/B runs.
  bool fused_speculation = true;
  // On a device backend, sample on the device (Backend::sample): only ids and requested logprobs come back,
  // not the logits rows. Off (or on the CPU backend): the rows are copied to the host and sampled there.
  bool device_sampling = true;
  // Prompt tokens a scoring request (prompt_logprobs) prefills per step at most: each brings a logits row to the
  // host (vocab * 4 bytes: 66 MB a step at 128 rows of a 129k vocabulary), so the step's buffer stays bounded.
  int32_t max_prompt_logprob_rows = 128;
  // Called on the scheduler thread with each step's chunks just before its forward (expert-parallel serving sends
  // them to the other ranks: engine/ep_serving.h). An exception fails the step's requests.
  std::function<void(const std::vector<SequenceChunk>&)> on_step;
  // Data-parallel attention under expert parallelism (engine/dp_attention.h): the cache's pages are cut into this
  // many equal parts, one per rank, and each admitted sequence takes all its pages from the part with the fewest in
  // use (its rank for life). Needs prefix_cache off and run_step set.
  int32_t cache_partitions = 1;
  // Runs a step in place of the model's forward on the scheduler's own cache (which is then not allocated): the
  // result's logits rows as DeepseekV3::forward gives them. Data-parallel attention runs the step over every rank
  // (dp_forward). Not with speculative decoding (the MTP module drafts from the scheduler's cache).
  std::function<ForwardOutput(const std::vector<SequenceChunk>&)> run_step;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int32_t max_tokens = 16;  // 0: only the prompt is run (scoring with prompt_logprobs, or warming the prefix cache)
  SamplingParams sampling;
  std::vector<std::string> stop;        // stop strings (not included in the output)
  std::vector<int32_t> stop_token_ids;  // besides EOS; the stop token itself is not part of the text
  bool ignore_eos = false;
  int32_t top_logprobs = -1;  // -1: no logprobs; otherwise the sampled token's logprob plus this many alternatives
  // -1: none. Otherwise the log-probability of every prompt token after the first under the tokens before it (the
  // model's distribution, as top_logprobs), with this many alternatives. Such a request computes every prompt
  // position (it does not reuse prefix-cache pages; it still indexes its own) and prefills at most
  // max_prompt_logprob_rows tokens a step, each chunk with all its logits rows.
  int32_t prompt_logprobs = -1;
  std::shared_ptr<TokenConstraint> constraint;  // null: any token may follow (see engine/token_constraint.h)
};

enum class FinishReason { none, stop, length, cancelled, error };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled", "error"

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // most likely tokens first
};

// What a request produced in one step (or its end). Text is the new stop-string-safe text.
struct GenerationEvent {
  int32_t index = 0;  // the index the request was submitted with (n > 1 choices share one sink)
  std::string text;
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> logprobs;  // one per token when requested
  // Only in a request's first event, when it asked for prompt_logprobs: entry i is prompt token i + 1's (the first
  // prompt token has none), prompt.size() - 1 entries.
  std::vector<TokenLogprob> prompt_logprobs;
  FinishReason finish = FinishReason::none;
  std::string error;
  int32_t prompt_tokens = 0, completion_tokens = 0;  // totals so far
  int32_t cached_tokens = 0;  // prompt tokens whose latents came from the prefix cache (not recomputed)
};

// Where a front end receives the events of one or more requests; the scheduler thread pushes, the front end pops.
class EventSink {
 public:
  void push(GenerationEvent e);
  // Waits up to `timeout` for events; returns all that are queued (possibly none).
  std::vector<GenerationEvent> pop(std::chrono::milliseconds timeout);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<GenerationEvent> queue_;
};

class Scheduler;

// A submitted request. cancel() is safe from any thread; the scheduler frees its pages before its next step and
// sends a final event with FinishReason::cancelled (unless it had already finished).
class RequestHandle {
 public:
  void cancel();
  uint64_t id() const { return id_; }

 private:
  friend class Scheduler;
  RequestHandle(Scheduler* s, uint64_t id) : scheduler_(s), id_(id) {}
  Scheduler* scheduler_;
  uint64_t id_;
  std::atomic<bool> cancelled_{false};
};

struct SchedulerStats {
  int64_t waiting = 0, running = 0;
  int64_t pages_total = 0, pages_used = 0, pages_free = 0, page_size = 0;  // used: held by requests
  int64_t pages_cached = 0;     // indexed by the prefix cache (some may be held by requests too)
  int64_t pages_evictable = 0;  // held only by the prefix cache: neither used nor free, reclaimed on demand
};


class Scheduler {
 public:
  // tokenizer may be null: then no text is produced and stop strings are refused.
  Scheduler(DeepseekV3& model, const Tokenizer* tokenizer, SchedulerOptions options);
  ~Scheduler();  // cancels everything and joins the thread
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Throws moe::Error when the request can never run (empty prompt, longer than the context, needs more cache than
  // there is, bad token ids or sampling parameters). Events go to `sink` tagged with `index`.
  std::shared_ptr<RequestHandle> submit(GenerationRequest request, std::shared_ptr<EventSink> sink, int32_t index = 0);

  SchedulerStats stats() const;
  EngineMetrics& metrics() { return metrics_; }
  int64_t max_context() const { return max_context_; }
  int64_t cache_capacity_tokens() const { return allocator_.total_pages() * options_.page_size; }
  const SchedulerOptions& options() const { return options_; }
  const ModelConfig& model_config() const { return model_.config(); }
  const DeepseekV3& model() const { return model_; }

 private:
  struct Sequence;
  struct Decided;  // one sequence's tokens decided in a step
  void loop();
  void step(std::vector<std::unique_ptr<Sequence>>& running);
  std::vector<int64_t> prefill_shares(const std::vector<Sequence*>& prefilling, int64_t budget) const;
  void admit(std::vector<std::unique_ptr<Sequence>>& running);
  void finish(Sequence& s, FinishReason reason, const std::string& error = "");
  // Indexes s's pages whose latents are now whole (prefix cache); `pending`: tokens decided this step, not yet
  // in s.output, that follow it.
  void index_pages(Sequence& s, std::span<const int32_t> pending = {});
  void update_page_stats();
  // Decides s's tokens from its logits rows (edited in place: padding masked, penalties): one sampled token, or
  // with drafts the kept drafts and the token after them (see "Speculation"), each with its log-probabilities
  // when the request asks for them, the constraint advanced over them. Touches only s's sampler and
  // constraint, so different sequences are decided in parallel.
  void decide_tokens(Sequence& s, std::span<float> rows, Decided& out) const;
  bool is_stop_token(const Sequence& s, int32_t token) const;
  // Samples the rows of a step's logits still on the device, in one Backend::sample call: each row's
  // settings, its constraint's allowed set as a bitmask (constrained rows only) and one draw of its RNG.
  // Fills tokens[r] / logprobs[r] / errors[r] for rows[r] (the logits row and its sequence).
  void sample_on_device(const TensorView& logits, const std::vector<size_t>& rows, const std::vector<Sequence*>& owners,
                        std::vector<int32_t>& tokens, std::vector<std::optional<TokenLogprob>>& logprobs,
                        std::vector<std::string>& errors);
  // The log-probability of `token` under the row (padding masked in place), with `top` alternatives.
  TokenLogprob row_logprob(std::span<float> row, int32_t token, int32_t top) const;
  void mask_padding(std::span<float> row) const;  // ids past the tokenizer's vocabulary: -inf
  // Ends a max_tokens 0 request once its prompt is in the cache: one event with its prompt logprobs, "length".
  void finish_scoring(Sequence& s);
  // Appends the token to s's output and sends its event (text, logprobs, finish); one sequence at a time.
  // constraint_complete: the request's constraint, having accepted the token, is whole.
  void emit_token(Sequence& s, int32_t token, std::optional<TokenLogprob> logprob, bool constraint_complete);
  // After a step's tokens are decided: the sequences' written positions, prefix-cache pages, metrics, events.
  void finish_step(const std::vector<SequenceChunk>& chunks, const std::vector<Sequence*>& owners,
                   const std::vector<bool>& was_decoding, std::vector<Decided>& decided, const std::vector<size_t>& rows,
                   const std::vector<Sequence*>& scored);
  // The step is all greedy speculating decodes with N drafts each (see SchedulerOptions::fused_speculation).
  bool can_fuse_speculation(const std::vector<SequenceChunk>& chunks, const std::vector<Sequence*>& owners) const;
  // That step through StepExecutor::forward_speculative: verification and the next drafts on the device, one
  // graph, ids back; the host compares ids.
  void speculative_step(const std::vector<SequenceChunk>& chunks, const std::vector<Sequence*>& owners);
  // The MTP module over the rows the step confirmed, giving each speculating sequence its next drafts.
  void draft_tokens(const std::vector<SequenceChunk>& chunks, const std::vector<Sequence*>& owners,
                    const std::vector<bool>& was_decoding, const std::vector<Decided>& decided,
                    const ForwardOutput& fwd);
  void wake();
  friend class RequestHandle;

  DeepseekV3& model_;
  StepExecutor executor_;  // steps of repeating shapes (decode at any batch size) replayed from graphs
  const Tokenizer* tokenizer_;
  SchedulerOptions options_;
  int64_t max_context_;
  std::optional<int32_t> eos_;
  std::optional<LatentCache> cache_;  // none with options.run_step
  PageAllocator allocator_;  // only the scheduler thread touches it after construction
  std::optional<PrefixCache> prefix_;  // with options.prefix_cache; scheduler thread only
  EngineMetrics metrics_;
  std::vector<float> logits_host_;  // the step's logits rows on the host (kept: tens of MB at large batches)

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  bool stop_ = false;
  std::atomic<int64_t> running_count_{0}, pages_used_{0}, pages_cached_{0}, pages_evictable_{0};
  std::atomic<uint64_t> next_id_{1};
  std::thread thread_;
};

// Splits a step's prefill budget among sequences needing need[i] more prompt tokens (in arrival order): an equal
// share each, those needing less take what they need and the rest is shared again (the division's remainder goes
// to the larger needs). Every sequence gets at least floor(budget / n) tokens (or all it needs). Exposed for tests.
std::vector<int64_t> share_budget(const std::vector<int64_t>& need, int64_t budget);

// Incremental stop-string matching over streamed text: feed() returns the text that is safe to emit; a stop
// string split across feeds is still found. Exposed for tests.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Appends text; returns what can be emitted now. Sets stopped() when a stop string was completed (the output
  // then ends just before it).
  std::string feed(std::string_view text);
  std::string flush();  // the held-back rest (no stop string was completed)
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace moe
