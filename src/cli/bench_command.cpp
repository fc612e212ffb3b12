// `moe bench`: prefill and decode speed on a checkpoint, with the weight bytes streamed per decoded token as
// a fraction of the memory bandwidth measured in the same run (a multi-threaded read of a large buffer).
// With --batch/--context (and always with --device cuda) it sweeps decode over batch sizes and context
// lengths (caches filled with random latents, so no prefill of B x context tokens is needed) and times one
// prefill of --prompt-tokens tokens; each figure is reported against its ceiling measured in the same run:
// on the GPU a device-to-device copy (bandwidth) and a cuBLAS BF16 GEMM (matrix rate), on the CPU the read
// bandwidth above.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>

#include "backend/backend.h"
#include "cli/bench_scheduler.h"
#include "cli/commands.h"
#include "cli/common.h"
#include "cli/expert_parallel_args.h"
#include "cli/progress_bar.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/dp_attention.h"
#include "engine/generator.h"
#include "engine/step_executor.h"

#ifdef MOE_HAVE_CUDA
#include "backend/cuda/ceilings.h"
#endif

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
  // The median of 7 passes: this machine's bandwidth moves with its neighbours' load, and the decode figure it is
  // compared with is an average too.
  std::vector<double> rates;
  for (int rep = 0; rep < 7; ++rep) {
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
    rates.push_back(double(bytes) / dt / 1e9);
  }
  std::nth_element(rates.begin(), rates.begin() + 3, rates.end());
  return rates[3];
}

struct BenchArgs {
  std::string model;
  BackendArgs backend;
  int32_t prompt_tokens = 128, gen_tokens = 32;
  uint64_t seed = 1;
  std::vector<int32_t> batches, contexts;
  int32_t steps = 0;  // decode steps per sweep point (0: automatic)
  bool print_tokens = false;
  bool fused_speculation = true;  // --fused-speculation (SchedulerOptions::fused_speculation)
  int32_t speculative = -1;  // >= 0: decode through the Scheduler with this many MTP drafts (bench_scheduler.h)
  std::string sampler = "none";  // sweep decode steps: none (batch 1 copies its row), host or device sampling
  EpArgs ep;                     // --ep N: the sweep with the routed experts spread over N ranks (replicated mode)
  RandomWeightsArgs random;      // --random-weights: --model is a config.json, weights made in memory
};

struct Ceilings {
  double bandwidth = 0.0;  // bytes/s
  double gemm = 0.0;       // FLOP/s (GPU only)
  std::string what;
};

Ceilings measure_ceilings(const Device& device) {
  Ceilings c;
#ifdef MOE_HAVE_CUDA
  if (device.is_cuda()) {
    c.bandwidth = cuda::measure_copy_bandwidth(device.index, size_t(2) << 30);
    c.gemm = cuda::measure_bf16_gemm_rate(device.index, 8192);
    c.what = "device-to-device copy of 2 GiB (read + written); cuBLAS BF16 GEMM 8192^3";
    return c;
  }
#endif
  c.bandwidth = measure_read_bandwidth(size_t(1) << 30) * 1e9;
  c.what = "multi-threaded read of 1 GiB";
  return c;
}

size_t device_memory_used(const Device& device) {
#ifdef MOE_HAVE_CUDA
  if (device.is_cuda()) return cuda::device_memory_used(device.index);
#endif
  return 0;
}

// Fills every layer of the cache with random values (BF16 or F32 bits of N(0, 1)-ish numbers).
void fill_cache_random(Backend& backend, LatentCache& cache, std::mt19937& rng) {
  const DType dt = backend.cache_dtype();
  const size_t elem = dtype_size(dt);
  std::vector<uint8_t> buf(size_t(64) << 20);
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (size_t i = 0; i + elem <= buf.size(); i += elem) {
    const float v = n(rng);
    if (dt == DType::BF16) {
      const uint16_t b = float_to_bf16(v);
      std::memcpy(&buf[i], &b, 2);
    } else {
      std::memcpy(&buf[i], &v, 4);
    }
  }
  for (int64_t l = 0; l < cache.num_layers(); ++l) {
    const TensorView& layer = cache.layer(l);
    const int64_t page_bytes = int64_t(layer.nbytes()) / layer.rows();
    const int64_t per_copy = std::max<int64_t>(1, int64_t(buf.size()) / page_bytes);
    for (int64_t p = 0; p < layer.rows(); p += per_copy)
      backend.copy_from_host(buf.data(), layer.slice_rows(p, std::min(per_copy, layer.rows() - p)));
  }
  backend.synchronize();
}

// With --ep N every rank runs the same steps on the same batch (replicated mode: attention on every rank, the
// routed experts spread), so a step's tokens/s is the job's and per GPU it is that over N; rank 0 prints.
// With
// --dp-attention the batch's sequences are dealt to the ranks in contiguous blocks (each rank its own
// sequences' attention and cache, engine/dp_attention.h; the prefill's one sequence on rank 0), and each step
// ends with the logits rows on rank 0, as served. After each sweep point's timed steps, as many more run with
// the MoE layers synchronised around their exchanges (ExpertParallel::set_timing) for the exchange time per
// step.
void run_sweep(const BenchArgs& a) {
  apply_thread_count();
  const EpRuntime ep = open_ep(a.ep, model_config(a.model, a.random), a.backend.device);
  auto backend = open_backend(a.backend);
  const Ceilings ceil = measure_ceilings(backend->device());
  ProgressBar bar = ProgressBar::on_stderr("loading " + a.model);
  DeepseekV3::Options options{.progress = ep.root() ? bar.fn() : ProgressFn{}};
  ep.apply(options);
  const auto model_ptr = open_model(a.model, a.random, *backend, options);
  DeepseekV3& model = *model_ptr;
  const ModelConfig& c = model.config();
  // Random weights have no files to count (materialising them all would take the full model's host memory).
  const bool have_stats = model.has_checkpoint();
  const ModelStats stats = have_stats ? compute_stats(model.checkpoint(), c) : ModelStats{};
  const int ranks = ep.comm ? ep.comm->size() : 1;
  const bool dp = ep.ep && ep.ep->data_parallel();
  backend->synchronize();
  const size_t weights_used = device_memory_used(backend->device());
  std::mt19937 rng(uint32_t(a.seed));
  const int64_t page = 64, layers = model.cache_layers();
  const int64_t cache_token_bytes = layers * c.cache_width() * int64_t(dtype_size(backend->cache_dtype()));

  fmt::print("model: {} ({} layers, hidden {}, {} experts top {}, {} heads), {}\n", a.model, c.num_hidden_layers,
             c.hidden_size, c.n_routed_experts, c.num_experts_per_tok, c.num_attention_heads,
             c.fp8_block_rows ? "FP8" : "BF16");
  fmt::print("device: {}", backend->name());
  // On a GPU, the precision of the many-token GEMMs (FP8 checkpoints: W8A8 or widened).
  if (Device::parse(a.backend.device).is_cuda()) fmt::print(", --cuda-prefill {}", a.backend.cuda_prefill);
  fmt::print("\n");
  fmt::print("ceilings ({}): bandwidth {:.0f} GB/s", ceil.what, ceil.bandwidth / 1e9);
  if (ceil.gemm > 0) fmt::print(", BF16 GEMM {:.0f} TFLOP/s", ceil.gemm / 1e12);
  fmt::print("\n");
  if (have_stats)
    fmt::print("weights: {} stored, {} active per token; device memory in use after loading: {}\n",
               human_bytes(stats.weight_bytes), human_bytes(stats.active_weight_bytes),
               human_bytes(int64_t(weights_used)));
  else
    fmt::print("weights: random, made in memory (--random-weights); device memory in use after loading: {}\n",
               human_bytes(int64_t(weights_used)));
  if (ep.ep)
    fmt::print(
        "expert parallelism: {} ranks over {} ({}, {} expert slots a rank)"
        "{}{}{}\n",
        ranks, ep.comm->name(),
        dp ? "data-parallel attention: each rank its own sequences" : "replicated: every rank the same batch",
        ep.ep->placement().slots_per_rank, a.ep.tbo ? ", two-micro-batch overlap" : "",
        a.ep.all_reduce ? ", the all-reduce exchange" : "",
        a.ep.redundant_experts ? fmt::format(", {} redundant slots", a.ep.redundant_experts) : "");

  // Prefill: one sequence of prompt_tokens random tokens.
  {
    const int64_t T = a.prompt_tokens;
    LatentCache cache(c, *backend, pages_for(T + 1, page), page, layers);
    std::vector<int32_t> pages;
    for (int64_t p = 0; p < cache.num_pages(); ++p) pages.push_back(int32_t(p));
    std::vector<int32_t> prompt(static_cast<size_t>(T));
    for (auto& t : prompt) t = int32_t(rng() % uint32_t(c.vocab_size));
    // --dp-attention: the sequence is rank 0's (its pages in rank 0's part), the other ranks idle in its MoE
    // layers.
    StepExecutor prefill_steps(model);
    const DpLayout prefill_layout{ranks, cache.num_pages()};
    auto prefill = [&] {
      const std::vector<SequenceChunk> chunks{SequenceChunk{prompt, 0, pages, false}};
      if (dp)
        dp_forward(prefill_steps, prefill_layout, chunks, cache);
      else
        model.forward(chunks, cache);
    };
    prefill();  // warm-up (cuBLAS heuristics, pool)
    backend->synchronize();
    double best = 1e30;
    for (int rep = 0; rep < 2; ++rep) {
      const auto t0 = Clock::now();
      prefill();
      backend->synchronize();
      best = std::min(best, seconds_since(t0));
    }
    // Model FLOPs: 2 per active parameter per token (embedding excluded; the LM head counted for the one
    // token whose logits a prefill computes) plus causal attention in the non-absorbed form (QK over
    // qk_head_dim, PV over v_head_dim, half the square).
    const double embed = double(c.vocab_size) * double(c.hidden_size), head = embed;
    const double attn = 2.0 * double(c.num_hidden_layers) * double(c.num_attention_heads) * double(T) * double(T + 1) / 2.0 *
                        double(c.qk_head_dim() + c.v_head_dim);
    fmt::print("prefill: {} tokens in {:.3f} s = {:.0f} tokens/s", T, best, double(T) / best);
    if (ranks > 1 && !dp) fmt::print(" ({:.0f} per rank)", double(T) / best / ranks);
    if (dp) fmt::print(" (one sequence: rank 0's attention, every rank's experts)");
    if (have_stats) {
      const double flops = 2.0 * (double(stats.active_params) - embed - head) * double(T) + 2.0 * head + attn;
      fmt::print(", {:.1f} TFLOP/s model FLOPs", flops / best / 1e12);
      if (ceil.gemm > 0)
        fmt::print(" = {:.1f}% of the measured BF16 GEMM rate{}", 100.0 * flops / best / ceil.gemm / ranks,
                   ranks > 1 ? " per rank" : "");
    }
    fmt::print("\n");
  }

  for (int32_t ctx : a.contexts) {
    for (int32_t B : a.batches) {
      const int32_t steps = a.steps > 0 ? a.steps : (B >= 64 ? 6 : 24);
      const int64_t timed_passes = ep.ep ? 2 : 1;  // --ep: the synchronised pass after the timed one
      const int64_t pps = pages_for(int64_t(ctx) + timed_passes * steps + 4, page);
      const int64_t cache_bytes = int64_t(B) * pps * page * cache_token_bytes;
#ifdef MOE_HAVE_CUDA
      const Device dev = backend->device();
      if (dev.is_cuda() &&
          double(cache_bytes) > 0.9 * double(cuda::device_memory_total(dev.index) - cuda::device_memory_used(dev.index))) {
        fmt::print("decode: batch {} context {}: skipped, the cache needs {} of device memory\n", B, ctx,
                   human_bytes(cache_bytes));
        continue;
      }
#endif
      // --dp-attention: sequence s on rank s * R / B (contiguous blocks), its pages in that rank's part; each
      // rank's cache holds the largest block.
      const int32_t R = dp ? ranks : 1;
      auto first_of = [&](int32_t r) {
        return int32_t((int64_t(B) * r + R - 1) / R);
      };  // first s with s*R/B >= r
      int64_t most = 0;
      for (int32_t r = 0; r < R; ++r) most = std::max<int64_t>(most, first_of(r + 1) - first_of(r));
      const DpLayout layout{R, most * pps};
      LatentCache cache(c, *backend, dp ? layout.pages_per_rank : int64_t(B) * pps, page, layers);
      fill_cache_random(*backend, cache, rng);
      std::vector<SequenceChunk> chunks(static_cast<size_t>(B));
      for (int32_t s = 0; s < B; ++s) {
        const int32_t r = int32_t(int64_t(s) * R / B);
        const int64_t base = dp ? r * layout.pages_per_rank + (s - first_of(r)) * pps : int64_t(s) * pps;
        for (int64_t p = 0; p < pps; ++p) chunks[size_t(s)].pages.push_back(int32_t(base + p));
      }
      std::vector<float> logits(static_cast<size_t>(c.vocab_size));
      StepExecutor executor(model);  // as the scheduler runs decode steps: replayed from graphs
      StepExecutor eager_steps(model, {.graphs = false});  // --dp-attention's synchronised pass
      // --sampler host / device: temperature 0.8, top-p 0.95 on every row.
      SamplingParams sp;
      sp.temperature = 0.8f;
      sp.top_p = 0.95f;
      std::vector<SampleRow> sample_rows(static_cast<size_t>(B));
      for (int32_t r = 0; r < B; ++r) sample_rows[size_t(r)] = sample_row(r, &sp);
      std::vector<SampleResult> sampled;
      std::vector<float> all_logits;
      std::uniform_real_distribution<double> unit(0.0, 1.0);
      double host_s = 0.0;  // time the host spends enqueuing a step (executor.forward returning)
      bool eager = false;   // the timed pass under --ep: its timers run on the host, which a graph replay skips
      auto step = [&](int32_t i) {
        for (auto& ch : chunks) {
          ch.tokens = {int32_t(rng() % uint32_t(c.vocab_size))};
          ch.start_pos = ctx + i;
        }
        const auto th = Clock::now();
        ForwardOutput out = dp      ? dp_forward(eager ? eager_steps : executor, layout, chunks, cache)
                            : eager ? model.forward(chunks, cache)
                                    : executor.forward(chunks, cache);
        host_s += seconds_since(th);
        if (dp && ep.rank() != 0) {  // the logits rows are rank 0's
          backend->synchronize();
        } else if (a.sampler == "device") {  // Backend::sample: only the ids come back
          for (auto& r : sample_rows) r.u = unit(rng);
          backend->sample(out.logits, sample_rows, sampled);
        } else if (a.sampler == "host") {  // every row to the host, sampled there on the thread pool
          all_logits.resize(size_t(B) * size_t(c.vocab_size));
          backend->copy_to_host(out.logits, all_logits.data());
          for (auto& r : sample_rows) r.u = unit(rng);
          ThreadPool::global().parallel_for(B, [&](int64_t b, int64_t e, int) {
            for (int64_t r = b; r < e; ++r)
              sample_row_host(std::span<float>(all_logits).subspan(size_t(r * c.vocab_size), size_t(c.vocab_size)),
                              sample_rows[size_t(r)]);
          });
        } else if (B == 1) {
          backend->copy_to_host(out.logits, logits.data());  // greedy sampling reads the logits
        } else {
          backend->synchronize();
        }
      };
      step(0);
      step(1);
      const size_t mem = device_memory_used(backend->device());
      host_s = 0.0;
      const int64_t replays_before = executor.stats().replays;
      const auto t0 = Clock::now();
      for (int32_t i = 0; i < steps; ++i) step(2 + i);
      const double dt = seconds_since(t0);
      const int64_t replayed = executor.stats().replays - replays_before;
      const double tps = double(B) * steps / dt;
      // Host enqueue time close to the step time means the step is bound by the host (launches, allocations).
      if (a.sampler != "none") fmt::print("[sampler {}] ", a.sampler);
      fmt::print("decode: batch {} context {}: {:.1f} tokens/s ({:.2f} ms/step, host enqueue {:.2f} ms/step, {} of {} steps "
                 "replayed from graphs)",
                 B, ctx, tps, 1e3 * dt / steps, 1e3 * host_s / steps, replayed, steps);
      if (B == 1 && have_stats && ranks == 1) {
        const double bytes = double(stats.active_weight_bytes) + double(ctx) * double(cache_token_bytes);
        const double roof = ceil.bandwidth / bytes;
        fmt::print(", roofline {:.0f} tokens/s (weights {} + cache {} per token) = {:.1f}%", roof,
                   human_bytes(stats.active_weight_bytes), human_bytes(int64_t(double(ctx) * double(cache_token_bytes))),
                   100.0 * tps / roof);
      }
      if (mem) fmt::print(", device memory in use {}", human_bytes(int64_t(mem)));
      fmt::print("\n");
      if (ep.ep) {
        // The exchange: bytes this rank sent a step (untimed pass), then its time in a synchronised pass.
        const uint64_t sent0 = ep.ep->bytes_sent();
        ep.ep->set_timing(true);
        eager = true;
        const auto t1 = Clock::now();
        for (int32_t i = 0; i < steps; ++i) step(2 + steps + i);
        eager = false;
        const double dt_timed = seconds_since(t1);
        const ExpertParallel::Timing tm = ep.ep->timing();
        ep.ep->set_timing(false);
        fmt::print("  expert parallelism: {:.1f} tokens/s per rank; rank 0 sent {} a step; in a synchronised pass "
                   "({:.2f} ms/step): MoE layers {:.2f} ms/step, of which exchange (dispatch, combine, gather, their "
                   "planning; or the all-reduce) {:.2f} ms and local experts {:.2f} ms\n",
                   tps / ranks, human_bytes(int64_t((ep.ep->bytes_sent() - sent0) / uint64_t(steps))),
                   1e3 * dt_timed / steps, 1e3 * tm.moe_s / steps, 1e3 * (tm.moe_s - tm.experts_s) / steps,
                   1e3 * tm.experts_s / steps);
      }
    }
  }
}

void run_bench(const BenchArgs& a) {
  apply_thread_count();
  if (a.prompt_tokens < 1 || a.gen_tokens < 1) fail("--prompt-tokens and --gen-tokens must be >= 1");
  auto backend = open_backend(a.backend);
  const double bandwidth_before = measure_read_bandwidth(size_t(1) << 30);
  ProgressBar bar = ProgressBar::on_stderr("loading " + a.model);
  DeepseekV3 model(a.model, *backend, {.progress = bar.fn()});
  const ModelConfig& c = model.config();
  const ModelStats stats = compute_stats(model.checkpoint(), c);
  std::mt19937 rng(uint32_t(a.seed));
  std::vector<int32_t> prompt(static_cast<size_t>(a.prompt_tokens));
  for (auto& t : prompt) t = int32_t(rng() % uint32_t(c.vocab_size));

  const int64_t context = a.prompt_tokens + a.gen_tokens + 1, page = 64;
  LatentCache cache(c, *backend, pages_for(context, page), page, model.cache_layers());
  std::vector<int32_t> pages;
  for (int64_t p = 0; p < cache.num_pages(); ++p) pages.push_back(int32_t(p));
  std::vector<float> logits(static_cast<size_t>(c.vocab_size));

  // Warm-up: a whole prefill touches every expert's weights once, so first-touch faults of the memory map
  // are not timed (a prompt of 32+ tokens routes to all experts with near certainty).
  model.forward({SequenceChunk{prompt, 0, pages, false}}, cache);
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
  // The ceiling is measured on both sides of the timed work and averaged, so a change in the machine's load
  // during the run weighs on both numbers alike.
  const double bandwidth_after = measure_read_bandwidth(size_t(1) << 30);
  const double bandwidth = 0.5 * (bandwidth_before + bandwidth_after);
  const double decode_tps = a.gen_tokens / decode_s;
  const double streamed = double(stats.active_weight_bytes) * decode_tps / 1e9;
  fmt::print("model: {} ({} layers, hidden {}, {} experts top {}), {}\n", a.model, c.num_hidden_layers, c.hidden_size,
             c.n_routed_experts, c.num_experts_per_tok, c.fp8_block_rows ? "FP8" : "BF16");
  fmt::print("device: {}, threads: {}\n", backend->name(), ThreadPool::global().size());
  fmt::print("memory read bandwidth (measured, 1 GiB buffer, median of 7 before and after): {:.2f} GB/s ({:.2f} / {:.2f})\n",
             bandwidth, bandwidth_before, bandwidth_after);
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
  add_backend_options(cmd, a->backend);
  cmd->add_option("--seed", a->seed, "Seed for the random prompt");
  cmd->add_option("--batch", a->batches, "Decode batch sizes to sweep (one or more)")->delimiter(',');
  cmd->add_option("--context", a->contexts, "Context lengths to sweep (one or more)")->delimiter(',');
  cmd->add_option("--steps", a->steps, "Decode steps timed per sweep point (default: 24, 6 from batch 64)");
  cmd->add_option("--speculative", a->speculative,
                  "Decode through the serving scheduler with this many MTP draft tokens per step (0: none) at each "
                  "--batch, reporting tokens/s and acceptance")
      ->check(CLI::Range(0, 8));
  cmd->add_flag("--print-tokens", a->print_tokens, "With --speculative: print every request's tokens");
  cmd->add_option("--fused-speculation", a->fused_speculation,
                  "With --speculative N: greedy steps verify and draft (all N, chained) in one device step, "
                  "ids back (default true; "
                  "false: rows decided on the host, the MTP module after the step)");
  cmd->add_option("--sampler", a->sampler,
                  "Sweep decode steps sample every row (temperature 0.8, top-p 0.95): none (batch 1 copies its logits "
                  "row), host (rows copied, host sampler) or device (Backend::sample)")
      ->check(CLI::IsMember({"none", "host", "device"}));
  add_ep_options(cmd, a->ep);
  add_random_weights_options(cmd, a->random);
  cmd->callback([a] {
    if (a->ep.ep > 1 || a->ep.gpus > 1 || a->random.enabled) {  // the sweep is the form that runs over ranks
      if (a->speculative >= 0) fail("bench --speculative runs one process: drop --ep, --gpus and --random-weights");
      if (a->batches.empty()) a->batches = {1};
      if (a->contexts.empty()) a->contexts = {a->prompt_tokens};
      return run_sweep(*a);
    }
    if (a->speculative >= 0) {
      SchedulerBenchArgs s{a->model,   a->backend,     a->prompt_tokens, a->gen_tokens,
                           a->seed,    a->batches,     a->speculative,   a->print_tokens,
                           a->fused_speculation};
      if (s.batches.empty()) s.batches = {1};
      return run_scheduler_bench(s);
    }
    if (a->batches.empty() && a->contexts.empty() && !Device::parse(a->backend.device).is_cuda()) return run_bench(*a);
    if (a->batches.empty()) a->batches = {1};
    if (a->contexts.empty()) a->contexts = {a->prompt_tokens};
    run_sweep(*a);
  });
}

}  // namespace moe::cli
