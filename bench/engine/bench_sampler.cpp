// Host sampling of one logits row at DeepSeek-V3's vocabulary (129,280) and Moonlight's/Kimi's (163,840),
// for the settings clients send: greedy, temperature 1 alone (the OpenAI default), top-p, top-k, min-p, and
// a repetition penalty over a long prompt. The floor in the same run is one read of the row (argmax): a
// sampler can do no better than touch every logit once. Logits are normal(0, 2) with a few larger ones,
// like a language model's (never zeros, never a flat row).
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "engine/sampler.h"

namespace {

using namespace moe;

std::vector<float> make_logits(int64_t vocab) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> l(static_cast<size_t>(vocab));
  for (auto& v : l) v = normal(rng);
  for (int i = 0; i < 16; ++i) l[rng() % l.size()] += 8.0f + float(i);
  return l;
}

void BM_Argmax(benchmark::State& state) {
  const auto logits = make_logits(state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(argmax(logits));
  state.SetBytesProcessed(int64_t(state.iterations()) * state.range(0) * 4);
}

void run_sampler(benchmark::State& state, SamplingParams params, int64_t prompt_tokens = 0) {
  const auto logits = make_logits(state.range(0));
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_tokens)), output;
  std::mt19937 rng(3);
  for (auto& t : prompt) t = int32_t(rng() % uint32_t(state.range(0)));
  params.seed = 11;
  Sampler sampler(params);
  std::vector<float> row(logits.size());
  for (auto _ : state) {
    row = logits;  // sample() edits the row in place (penalties)
    benchmark::DoNotOptimize(sampler.sample(row, prompt, output));
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * state.range(0) * 4);
}

SamplingParams params(float temperature, float top_p = 1.0f, int32_t top_k = 0, float min_p = 0.0f,
                      float repetition_penalty = 1.0f) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_p = top_p;
  p.top_k = top_k;
  p.min_p = min_p;
  p.repetition_penalty = repetition_penalty;
  return p;
}

void BM_Greedy(benchmark::State& s) { run_sampler(s, params(0.0f)); }
void BM_Temperature1(benchmark::State& s) { run_sampler(s, params(1.0f)); }
void BM_TopP09(benchmark::State& s) { run_sampler(s, params(0.7f, 0.9f)); }
void BM_TopK50(benchmark::State& s) { run_sampler(s, params(0.7f, 1.0f, 50)); }
void BM_MinP005(benchmark::State& s) { run_sampler(s, params(1.0f, 1.0f, 0, 0.05f)); }
void BM_RepetitionPenalty32kPrompt(benchmark::State& s) {
  run_sampler(s, params(0.0f, 1.0f, 0, 0.0f, 1.1f), 32768);
}
void BM_LogSoftmax(benchmark::State& state) {
  const auto logits = make_logits(state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(Sampler::log_softmax(logits));
  state.SetBytesProcessed(int64_t(state.iterations()) * state.range(0) * 4);
}

}  // namespace

#define VOCABS Arg(129280)->Arg(163840)->Unit(benchmark::kMicrosecond)
BENCHMARK(BM_Argmax)->VOCABS;
BENCHMARK(BM_Greedy)->VOCABS;
BENCHMARK(BM_Temperature1)->VOCABS;
BENCHMARK(BM_TopP09)->VOCABS;
BENCHMARK(BM_TopK50)->VOCABS;
BENCHMARK(BM_MinP005)->VOCABS;
BENCHMARK(BM_RepetitionPenalty32kPrompt)->VOCABS;
BENCHMARK(BM_LogSoftmax)->VOCABS;
BENCHMARK_MAIN();
