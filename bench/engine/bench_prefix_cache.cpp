// Time to first token of a repeated long prompt with and without the prefix cache, through the Scheduler (the
// engine `moe serve` runs): a random prompt of --prompt-tokens ids is submitted once (cold: nothing cached),
// then --repeats times again, one request at a time, max_tokens 1; TTFT is submission to the first token's
// event. Then --repeats prompts of the same ids followed by 200 new ones each (the next turn of a conversation,
// another question after the same system prompt). Prints each run and the medians; the factors are the medians
// without the cache over those with it.
// Usage: bench_prefix_cache [model dir] [prompt tokens] [repeats] [threads]   (defaults: models/tiny-dsv3 3000 5 all)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "core/thread_pool.h"
#include "engine/scheduler.h"
#include "model/deepseek_v3.h"

namespace {

using namespace moe;

double ttft_seconds(Scheduler& sched, const std::vector<int32_t>& prompt, int32_t& cached) {
  auto sink = std::make_shared<EventSink>();
  GenerationRequest r;
  r.prompt = prompt;
  r.max_tokens = 1;
  r.ignore_eos = true;
  const auto t0 = std::chrono::steady_clock::now();
  sched.submit(r, sink, 0);
  for (;;)
    for (auto& e : sink->pop(std::chrono::milliseconds(100)))
      if (!e.tokens.empty() || e.finish != FinishReason::none) {
        cached = e.cached_tokens;
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  const char* model_dir = argc > 1 ? argv[1] : "models/tiny-dsv3";
  const int64_t tokens = argc > 2 ? std::atoll(argv[2]) : 3000;
  const int repeats = argc > 3 ? std::atoi(argv[3]) : 5;
  if (argc > 4) ThreadPool::set_global_threads(std::atoi(argv[4]));
  auto backend = make_backend("cpu");
  DeepseekV3 model(model_dir, *backend);
  std::mt19937 rng(1);
  std::vector<int32_t> prompt(static_cast<size_t>(tokens));
  for (auto& t : prompt) t = int32_t(3 + rng() % uint32_t(model.config().vocab_size - 3));
  double medians[2] = {0, 0}, turn_medians[2] = {0, 0};
  for (const bool cache : {false, true}) {
    SchedulerOptions o;
    o.cache_tokens = 4 * (tokens + 256);
    o.prefix_cache = cache;  // the other options are `moe serve`'s defaults (512-token steps, 16-token pages)
    Scheduler sched(model, nullptr, o);
    int32_t cached = 0;
    const double cold = ttft_seconds(sched, prompt, cached);
    std::printf("prefix cache %s: first request %.3f s (cached %d)\n", cache ? "on" : "off", cold, cached);
    std::vector<double> runs;
    for (int i = 0; i < repeats; ++i) {
      runs.push_back(ttft_seconds(sched, prompt, cached));
      std::printf("  repeat %d: %.4f s (cached %d of %lld tokens)\n", i + 1, runs.back(), cached, (long long)tokens);
    }
    medians[cache] = median(runs);
    std::printf("  median of repeats: %.4f s\n", medians[cache]);
    runs.clear();
    for (int i = 0; i < repeats; ++i) {
      auto turn = prompt;
      for (int k = 0; k < 200; ++k) turn.push_back(int32_t(3 + rng() % uint32_t(model.config().vocab_size - 3)));
      runs.push_back(ttft_seconds(sched, turn, cached));
      std::printf("  next turn %d: %.4f s (cached %d of %zu tokens)\n", i + 1, runs.back(), cached, turn.size());
    }
    turn_medians[cache] = median(runs);
    std::printf("  median of next turns: %.4f s\n", turn_medians[cache]);
  }
  std::printf("TTFT of a repeated %lld-token prompt: %.4f s without the cache, %.4f s with it: %.1fx\n",
              (long long)tokens, medians[0], medians[1], medians[0] / medians[1]);
  std::printf("TTFT of the same %lld tokens + 200 new ones: %.4f s without the cache, %.4f s with it: %.1fx\n",
              (long long)tokens, turn_medians[0], turn_medians[1], turn_medians[0] / turn_medians[1]);
}
