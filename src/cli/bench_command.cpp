// `moe bench`: prefill and decode speed on a checkpoint, with the weight bytes streamed per decoded token as
// a fraction of the memory bandwidth measured in the same run (a multi-threaded read of a large buffer).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "backend/backend.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/generator.h"

#include <immintrin.h>

namespace moe::cli {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Read bandwidth of host memory in GB/s: every thread sums its share of a buffer much larger than the caches.
double measure_read_bandwidth(size_t bytes) {
  const size_t n = bytes / sizeof(float);
  std::vector<float> buf(n);
  ThreadPool::global().parallel_for(int64_t(n), [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) buf[size_t(i)] = float(i & 1023) * 0.001f;
  });
  double best = 0.0;
  for (int rep = 0; rep < 5; ++rep) {
    std::vector<double> partial(size_t(ThreadPool::global().size()), 0.0);
    const auto t0 = Clock::now();
    ThreadPool::global().parallel_for(int64_t(n), [&](int64_t b, int64_t e, int tid) {
#if defined(__AVX2__)
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
      int64_t i = b;
      for (; i + 32 <= e; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(&buf[size_t(i)]));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(&buf[size_t(i + 8)]));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(&buf[size_t(i + 16)]));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(&buf[size_t(i + 24)]));
      }
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
      double s = 0.0;
      for (float v : lanes) s += v;
      for (; i < e; ++i) s += buf[size_t(i)];
#else
      double s = 0.0;
      for (int64_t i = b; i < e; ++i) s += buf[size_t(i)];
#endif
      partial[size_t(tid)] += s;
    }, 1 << 20);
    const double dt = seconds_since(t0);
    volatile double sink = partial[0];
    (void)sink;
    best = std::max(best, double(bytes) / dt / 1e9);
  }
  return best;
}

struct BenchArgs {
  std::string model, device = "cpu";
  int32_t prompt_tokens = 128, gen_tokens = 32;
  uint64_t seed = 1;
};

void run_bench(const BenchArgs& a) {
  apply_thread_count();
  if (a.prompt_tokens < 1 || a.gen_tokens < 1) fail("--prompt-tokens and --gen-tokens must be >= 1");
  auto backend = make_backend(a.device);
  const double bandwidth = measure_read_bandwidth(size_t(1) << 30);
  DeepseekV3 model(a.model, *backend);
  const ModelConfig& c = model.config();
  const ModelStats stats = compute_stats(Checkpoint(a.model), c);
  std::mt19937 rng(uint32_t(a.seed));
  std::vector<int32_t> prompt(static_cast<size_t>(a.prompt_tokens));
  for (auto& t : prompt) t = int32_t(rng() % uint32_t(c.vocab_size));

  const int64_t context = a.prompt_tokens + a.gen_tokens + 1, page = 64;
  LatentCache cache(c, *backend, pages_for(context, page), page, model.cache_layers());
  std::vector<int32_t> pages;
  for (int64_t p = 0; p < cache.num_pages(); ++p) pages.push_back(int32_t(p));
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));

  // Warm-up: touches the weights once so page faults of the memory map are not timed.
  model.forward({SequenceChunk{{prompt[0]}, 0, pages, false}}, cache);
  auto t0 = Clock::now();
  ForwardOutput out = model.forward({SequenceChunk{prompt, 0, pages, false}}, cache);
  backend->copy_to_host(out.logits, logits.data());
  const double prefill_s = seconds_since(t0);
  int32_t next = argmax(logits);
  t0 = Clock::now();
  for (int32_t i = 0; i < a.gen_tokens; ++i) {
    out = model.forward({SequenceChunk{{next}, a.prompt_tokens + i, pages, false}}, cache);
    backend->copy_to_host(out.logits, logits.data());
    next = argmax(logits);
  }
  const double decode_s = seconds_since(t0);
  const double decode_tps = a.gen_tokens / decode_s;
  const double streamed = double(stats.active_weight_bytes) * decode_tps / 1e9;
  fmt::print("model: {} ({} layers, hidden {}, {} experts top {}), {}\n", a.model, c.num_hidden_layers, c.hidden_size,
             c.n_routed_experts, c.num_experts_per_tok, c.fp8_block_rows ? "FP8" : "BF16");
  fmt::print("device: {}, threads: {}\n", backend->name(), ThreadPool::global().size());
  fmt::print("memory read bandwidth (measured, 1 GiB buffer): {:.2f} GB/s\n", bandwidth);
  fmt::print("prefill: {} tokens in {:.3f} s = {:.1f} tokens/s\n", a.prompt_tokens, prefill_s, a.prompt_tokens / prefill_s);
  fmt::print("decode: {} tokens in {:.3f} s = {:.2f} tokens/s\n", a.gen_tokens, decode_s, decode_tps);
  fmt::print("decode weight bytes per token: {} -> {:.2f} GB/s streamed = {:.1f}% of measured bandwidth\n",
             human_bytes(stats.active_weight_bytes), streamed, 100.0 * streamed / bandwidth);
}

}  // namespace

void register_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Prefill and decode tokens/s and weight bandwidth vs. the measured ceiling");
  auto a = std::make_shared<BenchArgs>();
  cmd->add_option("--model", a->model, "Checkpoint directory")->required();
  cmd->add_option("--prompt-tokens", a->prompt_tokens, "Prompt length for the prefill measurement");
  cmd->add_option("--gen-tokens", a->gen_tokens, "Tokens decoded for the decode measurement");
  cmd->add_option("--threads", g_threads, "CPU threads (default: all cores)");
  cmd->add_option("--device", a->device, "cpu or cuda");
  cmd->add_option("--seed", a->seed, "Seed for the random prompt");
  cmd->callback([a] { run_bench(*a); });
}

}  // namespace moe::cli
