// Steps replayed from CUDA graphs by the step executor (engine/step_executor.cpp) against the same steps run
// eagerly (CudaOptions::graphs off) on the fixture models. Both run exactly the same kernels with the same launch shapes
// (decode steps get the padded page table either way), so the logits must agree bit for bit; any
// difference means a replay read a stale input or a captured host-side choice went out of date. The
// sequences have different lengths and grow across page-table widths (4-token pages), so several graphs
// are captured and each is replayed with new positions, slots and pages.
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "cuda_test_util.h"
#include "engine/step_executor.h"
#include "model/deepseek_v3.h"
#include "model/random_checkpoint.h"
#include "test_util.h"

namespace moe {
namespace {

std::unique_ptr<Backend> cuda_backend_with_graphs(bool graphs, CudaOptions::Prefill prefill,
                                                  bool moe_fusion = CudaOptions{}.moe_decode_fusion) {
  CudaOptions o;
  o.graphs = graphs;
  o.prefill = prefill;
  o.moe_decode_fusion = moe_fusion;
  return make_cuda_backend(0, o);
}

// prompt_lens: one sequence each; all decode kSteps steps together, then the first alone for 8 more. Each step
// brings `n` new tokens per sequence (the eager model's greedy token, then n - 1 random ones, as speculative
// verification does), with logits for all of them when n > 1.
void check_graph_replays(const std::string& model_dir, const std::vector<int32_t>& prompt_lens,
                         int64_t kSteps, int64_t min_captures, int32_t n = 1,
                         CudaOptions::Prefill prefill = CudaOptions{}.prefill,
                         bool moe_fusion = CudaOptions{}.moe_decode_fusion) {
  auto eager_backend = cuda_backend_with_graphs(false, prefill, moe_fusion),
       graph_backend = cuda_backend_with_graphs(true, prefill, moe_fusion);
  DeepseekV3 eager_model(model_dir, *eager_backend), graphed_model(model_dir, *graph_backend);
  StepExecutor eager(eager_model), graphed(graphed_model);
  const ModelConfig& c = eager_model.config();
  constexpr int64_t kPage = 4;
  const int32_t longest = *std::max_element(prompt_lens.begin(), prompt_lens.end());
  const int64_t pages_per_seq = (longest + (kSteps + 10) * n + kPage - 1) / kPage;
  const int64_t S = int64_t(prompt_lens.size());
  LatentCache cache_e(c, *eager_backend, S * pages_per_seq, kPage, eager_model.cache_layers());
  LatentCache cache_g(c, *graph_backend, S * pages_per_seq, kPage, graphed_model.cache_layers());

  std::mt19937_64 rng(test::time_seed("graph replay prompts"));
  std::vector<SequenceChunk> chunks(static_cast<size_t>(S));
  for (int64_t s = 0; s < S; ++s) {
    for (int32_t i = 0; i < prompt_lens[size_t(s)]; ++i)
      chunks[size_t(s)].tokens.push_back(int32_t(rng() % uint64_t(c.vocab_size)));
    for (int64_t p = 0; p < pages_per_seq; ++p)
      chunks[size_t(s)].pages.push_back(int32_t(s * pages_per_seq + p));
  }
  ForwardOutput oe = eager.forward(chunks, cache_e), og = graphed.forward(chunks, cache_g);
  std::vector<float> le = test::to_host_f32(*eager_backend, oe.logits), lg = test::to_host_f32(*graph_backend, og.logits);
  ASSERT_EQ(le, lg) << "prefill differs";  // prefill is never captured: the same eager path on both

  // Decode: every sequence for kSteps steps, then the first alone (another batch shape), feeding both models
  // the eager model's greedy tokens.
  int64_t prev_seqs = S;  // sequences of the previous step (its logits rows: prev_rows per sequence)
  for (int64_t step = 0; step < kSteps + 8; ++step) {
    const int64_t active = step < kSteps ? S : 1;
    const int64_t prev_rows = int64_t(oe.logit_rows.size()) / prev_seqs;
    std::vector<SequenceChunk> dec(static_cast<size_t>(active));
    for (int64_t s = 0; s < active; ++s) {
      SequenceChunk& ch = chunks[size_t(s)];
      // The sequence's last logits row of the previous step.
      const float* row = le.data() + (s * prev_rows + prev_rows - 1) * c.vocab_size;
      const int32_t next = int32_t(std::max_element(row, row + c.vocab_size) - row);
      ch.start_pos += int32_t(ch.tokens.size());
      ch.tokens = {next};
      for (int32_t i = 1; i < n; ++i) ch.tokens.push_back(int32_t(rng() % uint64_t(c.vocab_size)));
      ch.all_logits = n > 1;
      dec[size_t(s)] = ch;
      // Only the pages the sequence covers so far: the page table widens as it grows.
      const int64_t need = (ch.start_pos + n + kPage - 1) / kPage;
      dec[size_t(s)].pages.resize(size_t(need));
    }
    prev_seqs = active;
    oe = eager.forward(dec, cache_e);
    og = graphed.forward(dec, cache_g);
    le = test::to_host_f32(*eager_backend, oe.logits);
    lg = test::to_host_f32(*graph_backend, og.logits);
    ASSERT_EQ(le.size(), lg.size());
    ASSERT_EQ(oe.logit_rows, og.logit_rows);
    const double diff = test::max_abs_diff(le.data(), lg.data(), int64_t(le.size()));
    ASSERT_EQ(diff, 0.0) << "step " << step << " (" << active << " sequences, context "
                         << dec[0].start_pos + 1 << "): graph replay differs from the eager step";
    std::vector<float> he = test::to_host_f32(*eager_backend, oe.hidden), hg = test::to_host_f32(*graph_backend, og.hidden);
    ASSERT_EQ(he, hg) << "step " << step << ": hidden states differ";
  }
  const auto& st = graphed.stats();
  std::printf("graphs: %lld captured, %lld replays, %lld eager steps, %lld shapes refused\n",
              static_cast<long long>(st.captures), static_cast<long long>(st.replays),
              static_cast<long long>(st.eager), static_cast<long long>(st.refused));
  EXPECT_GE(st.captures, min_captures);
  EXPECT_GE(st.replays, kSteps - 4);
  EXPECT_EQ(st.refused, 0);
  EXPECT_EQ(eager.stats().captures, 0);
}

// Three sequences crossing page-table widths 8 -> 16.
TEST(CudaGraph, DecodeReplaysEqualEagerStepsBf16) {
  MOE_REQUIRE_GPU();
  check_graph_replays(test::kTinyModel, {3, 9, 22}, 24, 3);  // batch 3 at widths 8 and 16, then batch 1
}

TEST(CudaGraph, DecodeReplaysEqualEagerStepsFp8) {
  MOE_REQUIRE_GPU();
  check_graph_replays(test::kTinyModelFp8, {3, 9, 22}, 24, 3);
}

// The MoE decode fusions (CudaOptions::moe_decode_fusion) on and off at decode batches 3 and 1: moe_route's
// extra columns, the extended expert table and the GEMV over the ids, or the shared MLP apart and moe_plan's
// work items, captured and replayed.
TEST(CudaGraph, MoeDecodeFusionReplaysEqualEagerSteps) {
  MOE_REQUIRE_GPU();
  for (bool fusion : {true, false}) {
    SCOPED_TRACE(fusion ? "fusion on" : "fusion off");
    check_graph_replays(test::kTinyModel, {3, 9, 22}, 24, 3, 1, CudaOptions{}.prefill, fusion);
    check_graph_replays(test::kTinyModelFp8, {3, 9, 22}, 24, 3, 1, CudaOptions{}.prefill, fusion);
  }
}

// Whole models decoding with the MoE decode fusions (the shared experts as routed ones, the GEMV over the
// routing's ids) against the unfused steps (shared MLP apart, moe_plan's work items), both graphed: the
// fixture's shape with one shared expert (S = 1, its down used in place) and with two (S = 2, down slices
// copied apart), BF16 and FP8, random weights. Prefill (14 tokens) keeps the MLP apart in both: equal logits.
// Decode differs only in F32 summation orders (test_cuda_moe.cpp's SharedExpertsAsRoutedOnes: ~3e-6 relative
// per MoE layer, d), so over the fixture's 3 layers the BF16 logits stay within 1e-4 relative and the greedy
// tokens agree. FP8 weights take the GEMV on the tensor cores, whose input x is rounded to BF16 (unit roundoff
// u = 2^-9): a perturbation d << u moves an element across a rounding boundary with probability ~d/u, and such
// an element then changes by ~u, so the next layer's input differs by ~sqrt(d u) relative (7.7e-5 at d 3e-6),
// and the decode steps carry it on through the cache. Bound: 4 sqrt(3 layers * d * u) = 5.3e-4 (measured
// 1.4e-4 at step 9 of one seed, H200, 2026-12-04).
TEST(CudaGraph, MoeDecodeFusionMatchesTheUnfusedSteps) {
  MOE_REQUIRE_GPU();
  std::mt19937_64 rng(test::time_seed("shared experts routed"));
  const double kFp8Bound = 4.0 * std::sqrt(3.0 * 3e-6 * std::ldexp(1.0, -9));
  for (bool fp8 : {false, true})
    for (int32_t shared : {1, 2}) {
      ModelConfig c = random_checkpoint_config(test::kTinyModel, fp8);
      c.n_shared_experts = shared;
      auto source = std::make_shared<RandomTensors>(c, fp8, rng());
      auto apart_b = cuda_backend_with_graphs(true, CudaOptions{}.prefill, false),
           joined_b = cuda_backend_with_graphs(true, CudaOptions{}.prefill, true);
      DeepseekV3 apart(source, c, *apart_b, {}), joined(source, c, *joined_b, {});
      StepExecutor ea(apart), ej(joined);
      constexpr int64_t kPage = 4, kSteps = 8, kPages = 8;
      LatentCache ca(c, *apart_b, 2 * kPages, kPage, apart.cache_layers()),
          cj(c, *joined_b, 2 * kPages, kPage, joined.cache_layers());
      std::vector<SequenceChunk> chunks(2);
      for (int64_t s = 0; s < 2; ++s) {
        for (int64_t i = 0; i < 5 + 4 * s; ++i)
          chunks[size_t(s)].tokens.push_back(int32_t(rng() % uint64_t(c.vocab_size)));
        for (int64_t p = 0; p < kPages; ++p) chunks[size_t(s)].pages.push_back(int32_t(s * kPages + p));
      }
      const std::string what = std::string(fp8 ? "FP8" : "BF16") + ", " + std::to_string(shared) + " shared";
      std::vector<float> la = test::to_host_f32(*apart_b, ea.forward(chunks, ca).logits),
                         lj = test::to_host_f32(*joined_b, ej.forward(chunks, cj).logits);
      ASSERT_EQ(la, lj) << what << ": prefill differs";
      for (int64_t step = 0; step < kSteps + 4; ++step) {
        const int64_t active = step < kSteps ? 2 : 1, prev = int64_t(la.size()) / c.vocab_size;
        std::vector<SequenceChunk> dec;
        for (int64_t s = 0; s < active; ++s) {
          SequenceChunk& ch = chunks[size_t(s)];
          const float* row =
              la.data() + s * c.vocab_size;  // one logits row per sequence of the previous step
          ASSERT_LT(s, prev);
          ch.start_pos += int32_t(ch.tokens.size());
          ch.tokens = {int32_t(std::max_element(row, row + c.vocab_size) - row)};
          dec.push_back(ch);
        }
        la = test::to_host_f32(*apart_b, ea.forward(dec, ca).logits);
        lj = test::to_host_f32(*joined_b, ej.forward(dec, cj).logits);
        ASSERT_EQ(la.size(), lj.size());
        EXPECT_LE(test::rel_l2(lj.data(), la.data(), int64_t(la.size())), fp8 ? kFp8Bound : 1e-4)
            << what << ", step " << step;
        for (int64_t s = 0; s < active; ++s) {
          const float *ra = la.data() + s * c.vocab_size, *rj = lj.data() + s * c.vocab_size;
          EXPECT_EQ(std::max_element(ra, ra + c.vocab_size) - ra,
                    std::max_element(rj, rj + c.vocab_size) - rj)
              << what << ", step " << step << ", sequence " << s;
        }
      }
      EXPECT_GE(ej.stats().replays, kSteps - 4) << what;
    }
}

// One long sequence replayed across many 64-position attention tiles inside one page-table width (contexts
// 131..230 with width 64 pages = 256 positions): a replay must not keep the capture-time split of the
// sequence (which covered the first ~192 positions).
TEST(CudaGraph, LongContextReplaysEqualEagerSteps) {
  MOE_REQUIRE_GPU();
  check_graph_replays(test::kTinyModel, {130}, 100, 1);  // one shape: one capture, ~100 replays
}

// Decode at a batch above the GEMV's 8 tokens: the dense projections go through cuBLAS (its own workspace,
// set up for capture) and, for FP8, a dequantisation to a scratch copy, all captured.
TEST(CudaGraph, LargeBatchDecodeReplaysEqualEagerStepsBf16) {
  MOE_REQUIRE_GPU();
  std::vector<int32_t> lens;
  for (int32_t i = 0; i < 24; ++i) lens.push_back(2 + (i * 7) % 19);
  check_graph_replays(test::kTinyModel, lens, 12, 1);
}

TEST(CudaGraph, LargeBatchDecodeReplaysEqualEagerStepsFp8) {
  MOE_REQUIRE_GPU();
  std::vector<int32_t> lens;
  for (int32_t i = 0; i < 24; ++i) lens.push_back(2 + (i * 5) % 17);
  check_graph_replays(test::kTinyModelFp8, lens, 12, 1);
}

// W8A8 (--cuda-prefill fp8) at batch 24: the routed experts on the grouped FP8 x FP8 kernel (moe_gemm_fp8.cu),
// whose work items come from the device (no count read-back), captured with the rest of the step.
TEST(CudaGraph, LargeBatchDecodeReplaysEqualEagerStepsFp8W8A8) {
  MOE_REQUIRE_GPU();
  std::vector<int32_t> lens;
  for (int32_t i = 0; i < 24; ++i) lens.push_back(2 + (i * 5) % 17);
  check_graph_replays(test::kTinyModelFp8, lens, 12, 1, 1, CudaOptions::Prefill::Fp8);
}

// Speculative verification steps: three new tokens per sequence with logits for all of them.
TEST(CudaGraph, VerificationStepsReplayEqualEagerSteps) {
  MOE_REQUIRE_GPU();
  check_graph_replays(test::kTinyModel, {5, 11}, 16, 1, 3);
}

}  // namespace
}  // namespace moe
