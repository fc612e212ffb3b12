// `moe bench --speculative N` (see bench_scheduler.h).
#include "cli/bench_scheduler.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "cli/progress_bar.h"
#include "core/error.h"
#include "engine/scheduler.h"

namespace moe::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct Run {
  double decode_s = 0;     // last first token to last token
  int64_t decode_tokens = 0;  // tokens after each request's first
  uint64_t verifications = 0, drafted = 0, accepted = 0, steps = 0, fused = 0;
  std::vector<std::vector<int32_t>> tokens;  // per request
};

Run run_batch(Scheduler& sched, int32_t B, const SchedulerBenchArgs& a, std::mt19937& rng) {
  const int32_t V = int32_t(sched.model_config().vocab_size);
  EngineMetrics& m = sched.metrics();
  const uint64_t v0 = m.spec_verifications, d0 = m.spec_drafted, a0 = m.spec_accepted, s0 = m.steps, f0 = m.spec_fused_steps;
  auto sink = std::make_shared<EventSink>();
  for (int32_t i = 0; i < B; ++i) {
    GenerationRequest r;
    r.prompt.resize(size_t(a.prompt_tokens));
    for (auto& t : r.prompt) t = int32_t(rng() % uint32_t(V));
    r.max_tokens = a.gen_tokens;
    r.ignore_eos = true;
    sched.submit(std::move(r), sink, i);
  }
  std::vector<int32_t> got(size_t(B), 0);
  Run r;
  r.tokens.resize(size_t(B));
  int32_t finished = 0, started = 0;
  Clock::time_point all_started, last;
  const auto deadline = Clock::now() + std::chrono::minutes(30);
  while (finished < B) {
    if (Clock::now() > deadline) fail("bench: requests did not finish within 30 minutes");
    for (auto& e : sink.get()->pop(std::chrono::milliseconds(100))) {
      const auto now = Clock::now();
      if (!e.error.empty()) fail("bench: a request failed: {}", e.error);
      if (!e.tokens.empty() && got[size_t(e.index)] == 0 && ++started == B) all_started = now;
      got[size_t(e.index)] += int32_t(e.tokens.size());
      auto& t = r.tokens[size_t(e.index)];
      t.insert(t.end(), e.tokens.begin(), e.tokens.end());
      last = now;
      if (e.finish != FinishReason::none) ++finished;
    }
  }
  r.decode_s = std::chrono::duration<double>(last - all_started).count();
  // Tokens decided after the moment every request had its first (an approximation at large B: some requests
  // decoded a few tokens before the last one's first token; they are counted, as their steps were shared).
  for (int32_t g : got) r.decode_tokens += g - 1;
  r.verifications = m.spec_verifications - v0;
  r.drafted = m.spec_drafted - d0;
  r.accepted = m.spec_accepted - a0;
  r.steps = m.steps - s0;
  r.fused = m.spec_fused_steps - f0;
  return r;
}

}  // namespace

void run_scheduler_bench(const SchedulerBenchArgs& a) {
  apply_thread_count();
  if (a.prompt_tokens < 1 || a.gen_tokens < 2) fail("--prompt-tokens must be >= 1 and --gen-tokens >= 2");
  if (a.speculative < 0) fail("--speculative must be >= 0");
  auto backend = open_backend(a.backend);
  ProgressBar bar = ProgressBar::on_stderr("loading " + a.model);
  DeepseekV3 model(a.model, *backend, {.load_mtp = a.speculative > 0, .progress = bar.fn()});
  if (a.speculative > 0 && !model.has_mtp())
    fail("{}: --speculative needs the checkpoint's MTP module (num_nextn_predict_layers)", a.model);
  const int32_t max_b = *std::max_element(a.batches.begin(), a.batches.end());
  SchedulerOptions so;
  so.max_batch = max_b;
  so.page_size = 64;
  so.cache_tokens = int64_t(max_b) * (a.prompt_tokens + a.gen_tokens + a.speculative + 64);
  so.max_step_tokens = std::max<int32_t>(512, max_b * (1 + a.speculative));
  so.prefix_cache = false;  // random prompts share nothing; keep the measurement to decoding
  so.speculative = a.speculative;
  so.fused_speculation = a.fused_speculation;
  Scheduler sched(model, nullptr, so);
  std::mt19937 rng(uint32_t(a.seed));
  const ModelConfig& c = model.config();
  fmt::print("model: {} ({} layers, hidden {}, {} experts top {}), {}\n", a.model, c.num_hidden_layers, c.hidden_size,
             c.n_routed_experts, c.num_experts_per_tok, c.fp8_block_rows ? "FP8" : "BF16");
  fmt::print("device: {}; scheduler decode, greedy, prompt {} tokens, {} tokens per request, speculative {}{}\n",
             backend->name(), a.prompt_tokens, a.gen_tokens, a.speculative,
             a.fused_speculation ? " (fused)" : "");
  {  // warm-up (allocations, graphs, first touch of the weights), on its own random prompts
    SchedulerBenchArgs w = a;
    w.gen_tokens = std::min(a.gen_tokens, 8);
    std::mt19937 wrng(uint32_t(a.seed) + 1000);
    run_batch(sched, std::min(max_b, 2), w, wrng);
  }
  for (int32_t B : a.batches) {
    const Run r = run_batch(sched, B, a, rng);
    fmt::print("scheduler decode: batch {} speculative {}: {:.1f} tokens/s ({} tokens in {:.3f} s, {} steps)", B,
               a.speculative, double(r.decode_tokens) / r.decode_s, r.decode_tokens, r.decode_s, r.steps);
    if (r.verifications > 0)
      fmt::print(", drafted {} accepted {} (acceptance {:.3f}), {:.2f} tokens per verification", r.drafted, r.accepted,
                 double(r.accepted) / double(std::max<uint64_t>(r.drafted, 1)),
                 double(r.accepted + r.verifications) / double(r.verifications));
    if (a.speculative > 0) fmt::print(", {} fused steps", r.fused);
    fmt::print("\n");
    if (a.print_tokens)
      for (size_t i = 0; i < r.tokens.size(); ++i) fmt::print("tokens batch {} request {}: {}\n", B, i, fmt::join(r.tokens[i], ","));
  }
}

}  // namespace moe::cli
