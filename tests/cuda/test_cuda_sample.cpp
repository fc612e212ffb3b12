// Backend::sample on the GPU against the host's sample_row_host (backend/sampling.h) on the same rows and the
// same draws u: random logits (normal, scale 3, a share on a coarse grid so rows carry exact ties), many rows
// per launch, every setting the op takes. Skipped without a GPU.
//
// Tolerances. Greedy, the candidate sets and the penalties are the same float operations on the same values:
// exact. A draw may differ only where u * total lies within rounding of a boundary between two candidates'
// cumulative weights (the sums are added in another order; sample.cu bounds the difference by ~4 n 2^-53 of
// the total for n candidates): a disagreement counts as such a straddle when the host, with u moved by
// kStraddle = 1e-9 (>> 4 * 129280 * 2^-53 = 5.7e-11) either way, picks the GPU's token. Logprobs: both sides
// compute l - lse with lse accumulated in double; the float results differ by an ulp of lse and of l - lse,
// within 1e-5 for |logprob| < ~30.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "backend/sampling.h"
#include "cuda_test_util.h"
#include "engine/scheduler.h"
#include "model/deepseek_v3.h"
#include "server/scheduler_util.h"
#include "test_util.h"

namespace moe::test {
namespace {

constexpr double kStraddle = 1e-9;

std::vector<float> random_logits(std::mt19937_64& rng, int64_t R, int64_t V) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::vector<float> x(size_t(R * V));
  for (auto& v : x) {
    v = normal(rng);
    if (unit(rng) < 0.02f) v = std::round(v * 2.0f) / 2.0f;  // exact ties across the row
  }
  return x;
}

SamplingParams random_params(std::mt19937_64& rng, bool greedy_allowed) {
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  SamplingParams p;
  p.temperature = greedy_allowed && unit(rng) < 0.15f ? 0.0f : 0.3f + 1.2f * unit(rng);
  const float r = unit(rng);
  if (r < 0.3f) p.top_k = 1 + int32_t(unit(rng) * 200);
  if (unit(rng) < 0.5f) p.top_p = 0.5f + 0.49f * unit(rng);
  if (unit(rng) < 0.3f) p.min_p = 0.01f + 0.2f * unit(rng);
  return p;
}

struct Case {
  std::vector<SamplingParams> params;
  std::vector<std::vector<int32_t>> prompt, output;
  std::vector<std::vector<uint32_t>> masks;
  std::vector<SampleRow> rows;
};

// Runs the rows on the GPU (logits uploaded) and on the host (a copy per row).
void run_both(Backend& gpu, const std::vector<float>& logits, int64_t R, int64_t V, const std::vector<SampleRow>& rows,
              std::vector<SampleResult>& got, std::vector<SampleResult>& want) {
  Tensor d = gpu.alloc(DType::F32, {R, V});
  gpu.copy_from_host(logits.data(), d);
  gpu.sample(d, rows, got);
  want.resize(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<float> row(logits.begin() + rows[i].row * V, logits.begin() + (rows[i].row + 1) * V);
    want[i] = sample_row_host(row, rows[i]);
  }
}

int32_t host_token(const std::vector<float>& logits, int64_t V, SampleRow row, double u) {
  std::vector<float> copy(logits.begin() + row.row * V, logits.begin() + (row.row + 1) * V);
  row.u = u;
  return sample_row_host(copy, row).token;
}

class CudaSample : public GpuVsCpu {};

TEST_F(CudaSample, GreedyIsTheArgmax) {
  for (int64_t V : {int64_t(1000), int64_t(129280), int64_t(160000)}) {
    const int64_t R = V > 100000 ? 64 : 256;
    const auto logits = random_logits(rng_, R, V);
    SamplingParams greedy;
    std::vector<SampleRow> rows(static_cast<size_t>(R));
    for (int64_t r = 0; r < R; ++r) rows[size_t(r)] = sample_row(r, &greedy);
    std::vector<SampleResult> got, want;
    run_both(*gpu_, logits, R, V, rows, got, want);
    for (int64_t r = 0; r < R; ++r) {
      const auto row = std::span<const float>(logits).subspan(size_t(r * V), size_t(V));
      ASSERT_EQ(got[size_t(r)].token, argmax(row)) << "V=" << V << " row " << r;
    }
  }
}

// 10k seeded draws over mixed settings: >= 99.9 % agree, every disagreement a straddle, and every GPU token in
// the host's candidate set.
TEST_F(CudaSample, SeededDrawsAgreeWithTheHost) {
  const int64_t V = 32768, R = 250;
  int draws = 0, agree = 0;
  for (int round = 0; round < 40; ++round) {
    const auto logits = random_logits(rng_, R, V);
    std::vector<SamplingParams> params(static_cast<size_t>(R));
    std::vector<SampleRow> rows(static_cast<size_t>(R));
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    for (int64_t r = 0; r < R; ++r) {
      params[size_t(r)] = random_params(rng_, false);
      rows[size_t(r)] = sample_row(r, &params[size_t(r)], unit(rng_));
    }
    std::vector<SampleResult> got, want;
    run_both(*gpu_, logits, R, V, rows, got, want);
    for (int64_t r = 0; r < R; ++r) {
      ++draws;
      const SampleRow& row = rows[size_t(r)];
      const int32_t g = got[size_t(r)].token;
      SamplingCandidates cand;
      sampling_candidates(std::span<const float>(logits).subspan(size_t(r * V), size_t(V)), params[size_t(r)], cand);
      ASSERT_NE(std::find(cand.ids.begin(), cand.ids.end(), g), cand.ids.end())
          << "GPU drew " << g << " outside the host's candidates (row " << r << ", T " << params[size_t(r)].temperature
          << ", top_k " << params[size_t(r)].top_k << ", top_p " << params[size_t(r)].top_p << ", min_p "
          << params[size_t(r)].min_p << ")";
      if (g == want[size_t(r)].token) {
        ++agree;
        continue;
      }
      const bool straddle = host_token(logits, V, row, std::max(0.0, row.u - kStraddle)) == g ||
                            host_token(logits, V, row, std::min(std::nextafter(1.0, 0.0), row.u + kStraddle)) == g;
      EXPECT_TRUE(straddle) << "row " << r << " u " << row.u << ": GPU " << g << ", host " << want[size_t(r)].token;
    }
  }
  std::printf("[ draws ] %d of %d agree\n", agree, draws);
  EXPECT_GE(agree, int(0.999 * draws));
}

// logit_bias, repetition / frequency / presence penalties and allowed-token masks, greedy and sampled, with
// logprobs: the same ids as the host, logprobs within 1e-5.
TEST_F(CudaSample, PenaltiesBiasMasksAndLogprobs) {
  const int64_t V = 129280, R = 96;
  const auto logits = random_logits(rng_, R, V);
  std::uniform_int_distribution<int32_t> id(0, int32_t(V - 1));
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::vector<SamplingParams> params(static_cast<size_t>(R));
  std::vector<std::vector<int32_t>> prompt(static_cast<size_t>(R)), output(static_cast<size_t>(R));
  std::vector<std::vector<uint32_t>> masks(static_cast<size_t>(R));
  std::vector<SampleRow> rows(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) {
    SamplingParams& p = params[size_t(r)];
    p = random_params(rng_, true);
    p.repetition_penalty = unit(rng_) < 0.5f ? 1.0f + unit(rng_) : 1.0f;
    p.frequency_penalty = unit(rng_) < 0.5f ? unit(rng_) : 0.0f;
    p.presence_penalty = unit(rng_) < 0.5f ? unit(rng_) : 0.0f;
    // The row's current top tokens appear in the prompt and output (so the penalties change the choice), and
    // biases push some up or ban them.
    const auto row = std::span<const float>(logits).subspan(size_t(r * V), size_t(V));
    const auto top = top_ids(row, 8);
    for (int i = 0; i < 300; ++i) prompt[size_t(r)].push_back(id(rng_));
    for (int i = 0; i < 40; ++i) output[size_t(r)].push_back(i % 3 == 0 ? top[size_t(i % 8)] : id(rng_));
    prompt[size_t(r)].push_back(top[0]);
    prompt[size_t(r)].push_back(-5);  // ignored: outside the row
    for (int i = 0; i < 5; ++i) p.logit_bias.emplace_back(i < 2 ? top[size_t(i)] : id(rng_), 20.0f * unit(rng_) - 10.0f);
    if (r % 7 == 0) p.logit_bias.emplace_back(top[3], -100.0f);
    SampleRow& s = rows[size_t(r)];
    s = sample_row(r, &p);
    s.prompt = prompt[size_t(r)];
    s.output = output[size_t(r)];
    s.u = double(unit(rng_));
    s.top_logprobs = r % 3 == 0 ? -1 : int32_t(r % 21);
    if (r % 2 == 0) s.vocab_limit = V - 280;  // a padded vocabulary
    if (r % 3 != 2) {  // constrained: a random tenth of the vocabulary, with one of the top tokens
      auto& w = masks[size_t(r)];
      w.assign(size_t((V + 31) / 32), 0u);
      for (int64_t t = 0; t < V; ++t)
        if (unit(rng_) < 0.1f || t == top[2]) w[size_t(t >> 5)] |= 1u << (t & 31);
      s.allowed = w;
    }
  }
  std::vector<SampleResult> got, want;
  run_both(*gpu_, logits, R, V, rows, got, want);
  int straddles = 0;
  for (int64_t r = 0; r < R; ++r) {
    const SampleResult &g = got[size_t(r)], &w = want[size_t(r)];
    if (g.token != w.token) {
      const SampleRow& row = rows[size_t(r)];
      const bool straddle = params[size_t(r)].temperature > 0.0f &&
                            (host_token(logits, V, row, std::max(0.0, row.u - kStraddle)) == g.token ||
                             host_token(logits, V, row, std::min(std::nextafter(1.0, 0.0), row.u + kStraddle)) == g.token);
      EXPECT_TRUE(straddle) << "row " << r << ": GPU " << g.token << ", host " << w.token;
      ++straddles;
      continue;
    }
    if (rows[size_t(r)].top_logprobs < 0) continue;
    EXPECT_NEAR(g.logprob, w.logprob, 1e-5) << "row " << r;
    ASSERT_EQ(g.top.size(), w.top.size()) << "row " << r;
    for (size_t j = 0; j < w.top.size(); ++j) {
      EXPECT_NEAR(g.top[j].second, w.top[j].second, 1e-5) << "row " << r << " top " << j;
      if (g.top[j].first != w.top[j].first) {  // only a near-tie may swap
        EXPECT_NEAR(g.top[j].second, w.top[j].second, 1e-6) << "row " << r << " top " << j;
      }
    }
  }
  EXPECT_LE(straddles, 1);
}

// Top-k boundary ties: rows where many ids share the k-th logit keep the lowest ids, as the host does.
TEST_F(CudaSample, TopKTiesGoToTheLowerIds) {
  const int64_t V = 50000, R = 32;
  std::vector<float> logits(size_t(R * V));
  std::uniform_int_distribution<int> level(0, 40);
  for (auto& v : logits) v = float(level(rng_)) * 0.25f - 5.0f;  // 41 levels: ~1200 ids per level
  std::vector<SamplingParams> params(static_cast<size_t>(R));
  std::vector<SampleRow> rows(static_cast<size_t>(R));
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int64_t r = 0; r < R; ++r) {
    params[size_t(r)].temperature = 1.0f;
    params[size_t(r)].top_k = int32_t(1 + r * 97);
    if (r % 2) params[size_t(r)].top_p = 0.3f;
    rows[size_t(r)] = sample_row(r, &params[size_t(r)], unit(rng_));
  }
  std::vector<SampleResult> got, want;
  run_both(*gpu_, logits, R, V, rows, got, want);
  for (int64_t r = 0; r < R; ++r) EXPECT_EQ(got[size_t(r)].token, want[size_t(r)].token) << "row " << r;
}

// The scheduler on the GPU with device sampling against the same scheduler sampling on the host: seeded
// requests (one at a time, so both runs step the same batches) draw the same tokens, logprobs within 1e-5.
TEST_F(CudaSample, SchedulerSamplesOnTheDeviceAsOnTheHost) {
  DeepseekV3 model(test::kTinyModel, *gpu_);
  auto run = [&](bool device) {
    SchedulerOptions o;
    o.cache_tokens = 1024;
    o.device_sampling = device;
    Scheduler sched(model, nullptr, o);
    std::vector<Result> out;
    for (int i = 0; i < 6; ++i) {
      auto sink = std::make_shared<EventSink>();
      GenerationRequest r;
      r.prompt = {5 + i, 6, 7, 311, 101};
      r.max_tokens = 12;
      r.ignore_eos = true;
      r.sampling.temperature = i == 0 ? 0.0f : 0.8f + 0.1f * float(i);
      r.sampling.top_p = i % 2 ? 0.9f : 1.0f;
      r.sampling.top_k = i == 2 ? 20 : 0;
      r.sampling.min_p = i == 4 ? 0.05f : 0.0f;
      r.sampling.repetition_penalty = i == 3 ? 1.3f : 1.0f;
      r.sampling.frequency_penalty = i == 5 ? 0.5f : 0.0f;
      r.sampling.logit_bias = {{42, 2.0f}};
      r.sampling.seed = 100 + uint64_t(i);
      r.top_logprobs = i % 2 ? 3 : -1;
      sched.submit(r, sink, 0);
      out.push_back(collect(*sink, 1)[0]);
    }
    return out;
  };
  const auto host = run(false), dev = run(true);
  for (size_t i = 0; i < host.size(); ++i) {
    EXPECT_EQ(dev[i].tokens, host[i].tokens) << "request " << i;
    ASSERT_EQ(dev[i].logprobs.size(), host[i].logprobs.size()) << "request " << i;
    for (size_t t = 0; t < host[i].logprobs.size(); ++t) {
      EXPECT_NEAR(dev[i].logprobs[t].logprob, host[i].logprobs[t].logprob, 1e-5) << "request " << i << " token " << t;
      ASSERT_EQ(dev[i].logprobs[t].top.size(), host[i].logprobs[t].top.size());
    }
  }
}

}  // namespace
}  // namespace moe::test
