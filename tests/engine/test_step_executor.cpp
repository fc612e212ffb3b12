// The step executor against plain DeepseekV3::forward on the CPU, through a backend that captures and replays
// like the CUDA backend (replay_backend.h): which steps are captured, that replays with rewritten inputs give
// exactly the eager results, that a refused capture falls back to eager steps for good, and the graph limit.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <random>

#include "engine/step_executor.h"
#include "model/random_checkpoint.h"
#include "replay_backend.h"
#include "test_util.h"

namespace moe {
namespace {

std::vector<float> to_host(Backend& b, const Tensor& t) {
  std::vector<float> v(size_t(t.numel()));
  b.copy_to_host(t, v.data());
  return v;
}

TEST(StepExecutor, UniformSteps) {
  const std::vector<int32_t> pages{0, 1};
  EXPECT_TRUE(is_uniform_step({{{5}, 3, pages, false}, {{7}, 9, pages, false}}));          // decode
  EXPECT_TRUE(is_uniform_step({{{5, 6, 7}, 3, pages, true}, {{7, 1, 2}, 9, pages, true}}));  // verification
  EXPECT_FALSE(is_uniform_step({{{5, 6}, 3, pages, false}}));                  // a prefill chunk: last logits
  EXPECT_FALSE(is_uniform_step({{{5}, 3, pages, false}, {{7, 8}, 9, pages, true}}));  // mixed lengths
  EXPECT_FALSE(is_uniform_step({{{5}, 3, pages, false}, {{7}, 9, pages, true}}));     // mixed logits
  EXPECT_FALSE(is_uniform_step({}));
}

// Runs the same steps through an executor on a ReplayBackend and through plain forward() on the CPU backend:
// a prompt per sequence, then `steps` steps of n tokens per sequence (the greedy token, then random ones).
struct Runs {
  StepExecutor::Stats stats;
  size_t graphs = 0;
};
Runs compare(const std::vector<int32_t>& prompt_lens, int steps, int32_t n, int64_t refuse_tokens = -1,
             size_t max_graphs = 32, bool alternate_batch = false, const std::string& model = test::kTinyModel) {
  auto cpu = make_cpu_backend();
  test::ReplayBackend replay(*cpu);
  replay.refuse_tokens = refuse_tokens;
  DeepseekV3 plain(model, *cpu), captured_model(model, replay);
  StepExecutor executor(captured_model, {.graphs = true, .max_graphs = max_graphs});
  const ModelConfig& c = plain.config();
  constexpr int64_t kPage = 4;
  const int64_t S = int64_t(prompt_lens.size());
  const int64_t pps = (*std::max_element(prompt_lens.begin(), prompt_lens.end()) + steps * n + kPage) / kPage + 1;
  LatentCache cache_p(c, *cpu, S * pps, kPage, plain.cache_layers());
  LatentCache cache_r(c, replay, S * pps, kPage, captured_model.cache_layers());
  std::mt19937 rng(7);
  std::vector<SequenceChunk> seqs(static_cast<size_t>(S));
  for (int64_t s = 0; s < S; ++s) {
    for (int32_t i = 0; i < prompt_lens[size_t(s)]; ++i) seqs[size_t(s)].tokens.push_back(int32_t(rng() % 1000));
    for (int64_t p = 0; p < pps; ++p) seqs[size_t(s)].pages.push_back(int32_t(s * pps + p));
  }
  ForwardOutput op = plain.forward(seqs, cache_p), orr = executor.forward(seqs, cache_r);
  std::vector<float> lp = to_host(*cpu, op.logits), lr = to_host(replay, orr.logits);
  EXPECT_EQ(lp, lr) << "prefill";
  std::vector<int64_t> last_row(static_cast<size_t>(S));
  for (int64_t s = 0; s < S; ++s) last_row[size_t(s)] = s;
  for (int step = 0; step < steps; ++step) {
    // Every other step only the first sequences (another batch shape) when alternating.
    const int64_t active = alternate_batch && step % 2 ? std::max<int64_t>(1, S - 1) : S;
    std::vector<SequenceChunk> chunks;
    for (int64_t s = 0; s < active; ++s) {
      SequenceChunk& ch = seqs[size_t(s)];
      const float* row = lp.data() + last_row[size_t(s)] * c.vocab_size;
      ch.start_pos += int32_t(ch.tokens.size());
      ch.tokens = {int32_t(std::max_element(row, row + c.vocab_size) - row)};
      for (int32_t i = 1; i < n; ++i) ch.tokens.push_back(int32_t(rng() % 1000));
      ch.all_logits = n > 1;
      chunks.push_back(ch);
      chunks.back().pages.resize(size_t((ch.start_pos + n + kPage - 1) / kPage));  // the table widens as it grows
      last_row[size_t(s)] = s * n + n - 1;
    }
    op = plain.forward(chunks, cache_p);
    orr = executor.forward(chunks, cache_r);
    lp = to_host(*cpu, op.logits);
    lr = to_host(replay, orr.logits);
    EXPECT_EQ(op.logit_rows, orr.logit_rows);
    EXPECT_EQ(lp, lr) << "step " << step;
    EXPECT_EQ(to_host(*cpu, op.hidden), to_host(replay, orr.hidden)) << "step " << step;
    EXPECT_EQ(op.index_topk.size(), orr.index_topk.size());
    for (size_t l = 0; l < std::min(op.index_topk.size(), orr.index_topk.size()); ++l) {
      const Tensor &a = op.index_topk[l], &b = orr.index_topk[l];
      EXPECT_EQ(a.shape(), b.shape());
      if (a.shape() != b.shape()) continue;
      EXPECT_EQ(std::vector<int32_t>(a.as<int32_t>(), a.as<int32_t>() + a.numel()),
                std::vector<int32_t>(b.as<int32_t>(), b.as<int32_t>() + b.numel()))
          << "step " << step << " layer " << l;
    }
    if (::testing::Test::HasFailure()) break;
  }
  return {executor.stats(), executor.graphs()};
}

TEST(StepExecutor, DecodeStepsAreCapturedThenReplayedWithTheSameResults) {
  const Runs r = compare({3, 9, 14}, 10, 1);
  // Prefill: eager. Decode: seen once (eager), captured at the second step; widths 4 -> 8 pages give a second
  // shape on the way.
  EXPECT_GE(r.stats.captures, 1);
  EXPECT_GE(r.stats.replays, 6);
  EXPECT_EQ(r.stats.refused, 0);
  EXPECT_EQ(r.stats.replays + r.stats.eager, 11);  // a captured step is replayed at once: counted in both
}

// DeepSeek-V3.2: the indexer and the sparse attention choose nothing on the host, so their decode steps are
// captured and replayed like V3's, with contexts growing past index_topk (16) while replaying.
TEST(StepExecutor, SparseAttentionDecodeStepsAreCapturedAndReplayed) {
  const Runs r = compare({3, 12, 20}, 10, 1, -1, 32, false, test::kTinyV32Model);
  EXPECT_GE(r.stats.captures, 1);
  EXPECT_GE(r.stats.replays, 6);
  EXPECT_EQ(r.stats.refused, 0);
}

TEST(StepExecutor, VerificationStepsAreCaptured) {
  const Runs r = compare({4, 6}, 8, 3);
  EXPECT_GE(r.stats.captures, 1);
  EXPECT_GE(r.stats.replays, 4);
}

TEST(StepExecutor, RefusedCaptureRunsEagerlyForGood) {
  // Every op of more than 2 rows refuses capture: decode of 3 sequences is refused once, then always eager.
  const Runs r = compare({3, 5, 8}, 8, 1, /*refuse_tokens=*/2);
  EXPECT_EQ(r.stats.replays, 0);
  EXPECT_EQ(r.stats.captures, 0);
  EXPECT_GE(r.stats.refused, 1);
  EXPECT_EQ(r.stats.eager, 9);  // prefill + 8 decode steps; the refused capture ran nothing
}

TEST(StepExecutor, KeepsAtMostMaxGraphs) {
  // Two batch shapes alternating (and the page-table width growing): two shapes fit, older ones go.
  const Runs r = compare({3, 5, 8}, 16, 1, -1, /*max_graphs=*/2, /*alternate_batch=*/true);
  EXPECT_LE(r.graphs, 2u);
  EXPECT_GE(r.stats.captures, 2);
  EXPECT_GE(r.stats.replays, 8);
}

// The fused speculative step (forward_speculative) with N drafts a sequence, on a capturing backend, against
// its definition computed with plain forward() on the CPU: the main model over [token, draft 1..N] rows, the
// host argmax of each row, the MTP module (forward_mtp) over those tokens at the same positions, the host
// argmax of its rows; then, from each sequence's last kept row k, the module chained N - 1 times over one
// token a sequence at positions p + k + 1, ... (its previous draft and output state), as
// Scheduler::draft_tokens chains it. Drafts are the step's own (the fixture's MTP module: mostly rejected, so
// the rejected rows' cache entries are overwritten by later steps) or, every third step, random tokens; steps
// are captured and replayed. Returns the drafts kept.
int fused_step_against_definition(const std::string& model_dir, int32_t N) {
  auto cpu = make_cpu_backend();
  test::ReplayBackend replay(*cpu);
  const DeepseekV3::Options opts{.load_mtp = true, .progress = {}};
  DeepseekV3 plain(model_dir, *cpu, opts), captured_model(model_dir, replay, opts);
  StepExecutor executor(captured_model);
  const ModelConfig& c = plain.config();
  constexpr int64_t kPage = 4, kPages = 16;
  LatentCache cache_p(c, *cpu, 2 * kPages, kPage, plain.cache_layers());
  LatentCache cache_r(c, replay, 2 * kPages, kPage, captured_model.cache_layers());
  std::mt19937 rng(11);
  auto argmax_all = [&](Backend& b, const Tensor& logits) {
    const std::vector<float> x = to_host(b, logits);
    std::vector<int32_t> ids;
    for (int64_t r = 0; r < logits.dim(0); ++r)
      ids.push_back(argmax(std::span<const float>(x).subspan(size_t(r * c.vocab_size), size_t(c.vocab_size))));
    return ids;
  };
  // Prefill of two prompts (lengths 5 and 9) in both caches, the MTP layer's rows too.
  std::vector<SequenceChunk> seqs(2);
  for (int s = 0; s < 2; ++s) {
    for (int i = 0; i < 5 + 4 * s; ++i) seqs[size_t(s)].tokens.push_back(int32_t(rng() % 1000));
    for (int64_t p = 0; p < kPages; ++p) seqs[size_t(s)].pages.push_back(int32_t(s * kPages + p));
  }
  const ForwardOutput op = plain.forward(seqs, cache_p), orr = executor.forward(seqs, cache_r);
  const std::vector<int32_t> first = argmax_all(*cpu, op.logits);
  std::vector<SequenceChunk> mseqs = seqs;
  for (int s = 0; s < 2; ++s) {
    auto& t = mseqs[size_t(s)].tokens;
    t.erase(t.begin());
    t.push_back(first[size_t(s)]);
  }
  const std::vector<int32_t> draft0 = argmax_all(*cpu, plain.forward_mtp(mseqs, op.hidden, cache_p).logits);
  EXPECT_EQ(argmax_all(replay, captured_model.forward_mtp(mseqs, orr.hidden, cache_r).logits), draft0);
  // Steps: chunk s is [next, draft 1..N] at the sequence's next position. Before the first step the
  // sequences' drafts past the first are random (no chain has run yet).
  std::vector<int32_t> next = first, pos = {5, 9};
  std::vector<std::vector<int32_t>> draft(2);
  for (int s = 0; s < 2; ++s) {
    draft[size_t(s)].push_back(draft0[size_t(s)]);
    while (int32_t(draft[size_t(s)].size()) < N) draft[size_t(s)].push_back(int32_t(rng() % 1000));
  }
  const size_t R = size_t(N) + 1;
  int kept_any = 0;
  for (int step = 0; step < 9; ++step) {
    std::vector<SequenceChunk> chunks(2);
    for (int s = 0; s < 2; ++s) {
      chunks[size_t(s)] = {{next[size_t(s)]}, pos[size_t(s)], seqs[size_t(s)].pages, true};
      for (int32_t d : draft[size_t(s)])
        chunks[size_t(s)].tokens.push_back(step % 3 == 2 ? int32_t(rng() % 1000) : d);
    }
    const ForwardOutput main = plain.forward(chunks, cache_p);
    const std::vector<int32_t> verified = argmax_all(*cpu, main.logits);
    std::vector<SequenceChunk> mchunks = chunks;
    for (size_t s = 0; s < 2; ++s)
      mchunks[s].tokens.assign(verified.begin() + std::ptrdiff_t(s * R),
                               verified.begin() + std::ptrdiff_t((s + 1) * R));
    const ForwardOutput mtp = plain.forward_mtp(mchunks, main.hidden, cache_p);
    const std::vector<int32_t> drafts = argmax_all(*cpu, mtp.logits);
    // The chain, from each sequence's last kept row.
    std::vector<size_t> kept(2, 0);
    for (size_t s = 0; s < 2; ++s)
      while (kept[s] + 1 < R && chunks[s].tokens[kept[s] + 1] == verified[s * R + kept[s]]) ++kept[s];
    std::vector<std::vector<int32_t>> chained;
    std::vector<SequenceChunk> one(2);
    std::vector<int32_t> rows;
    for (size_t s = 0; s < 2; ++s) {
      one[s] = {{drafts[s * R + kept[s]]},
                int32_t(chunks[s].start_pos + int32_t(kept[s]) + 1),
                chunks[s].pages,
                false};
      rows.push_back(int32_t(s * R + kept[s]));
    }
    Tensor h = cpu->alloc_uninitialized(mtp.hidden.dtype(), {2, mtp.hidden.dim(1)});
    cpu->gather_rows(mtp.hidden, rows, h);
    for (int32_t d = 1; d < N; ++d) {
      const ForwardOutput o = plain.forward_mtp(one, h, cache_p);
      chained.push_back(argmax_all(*cpu, o.logits));
      for (size_t s = 0; s < 2; ++s)
        one[s] = {{chained.back()[s]}, one[s].start_pos + 1, chunks[s].pages, false};
      h = o.hidden;
    }
    const StepExecutor::SpeculativeIds got = executor.forward_speculative(chunks, cache_r, 0);
    EXPECT_EQ(got.verified, verified) << "step " << step;
    EXPECT_EQ(got.drafts, drafts) << "step " << step;
    EXPECT_EQ(got.chained, chained) << "step " << step;
    if (::testing::Test::HasFailure()) return 0;
    for (size_t s = 0; s < 2; ++s) {
      kept_any += int(kept[s]);
      next[s] = verified[s * R + kept[s]];
      draft[s] = {drafts[s * R + kept[s]]};
      for (const auto& ch : chained) draft[s].push_back(ch[s]);
      pos[s] += int32_t(kept[s]) + 1;
    }
  }
  std::printf("%s, %d drafts: %lld captures, %lld replays, %d drafts kept\n", model_dir.c_str(), N,
              (long long)executor.stats().captures, (long long)executor.stats().replays, kept_any);
  EXPECT_GE(executor.stats().captures, 1);
  EXPECT_GE(executor.stats().replays, 4);
  return kept_any;
}

TEST(StepExecutor, FusedSpeculativeStepIsItsDefinition) {
  for (int32_t N : {1, 2, 3})
    fused_step_against_definition(test::kTinyModel, N);  // random MTP module: rejected
  // The MTP check model (its module drafts the main model's greedy token): drafts kept, the chain's too.
  const std::string dir = test::temp_path("fused-mtp-check");
  RandomCheckpointOptions o;
  o.config_path = test::kTinyModel + "/config.json";
  o.out_dir = dir;
  o.seed = 7;
  o.mtp_check = true;
  create_random_checkpoint(o);
  EXPECT_GE(fused_step_against_definition(dir, 1),
            6);  // of 12 (6 steps with the module's own drafts, 2 sequences)
  EXPECT_GE(fused_step_against_definition(dir, 3), 18);  // of 36: the chained drafts are kept too
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe
