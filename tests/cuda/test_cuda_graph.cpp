// Decode steps replayed from CUDA graphs (model/deepseek_v3_graphs.cpp) against the same steps run eagerly
// (MOE_CUDA_GRAPH=0) on the fixture models. Both run exactly the same kernels with the same launch shapes
// (decode steps get the padded page table either way), so the logits must agree bit for bit; any
// difference means a replay read a stale input or a captured host-side choice went out of date. The
// sequences have different lengths and grow across page-table widths (4-token pages), so several graphs
// are captured and each is replayed with new positions, slots and pages.
#include <algorithm>
#include <cstdlib>

#include "cuda_test_util.h"
#include "model/deepseek_v3.h"
#include "test_util.h"

namespace moe {
namespace {

std::vector<float> to_host(Backend& b, const Tensor& t) {
  std::vector<float> v(size_t(t.numel()));
  b.copy_to_host(t, v.data());
  return v;
}

std::unique_ptr<Backend> cuda_backend_with_graphs(bool graphs) {
  if (!graphs) setenv("MOE_CUDA_GRAPH", "0", 1);
  auto b = make_cuda_backend(0);
  unsetenv("MOE_CUDA_GRAPH");
  return b;
}

// prompt_lens: one sequence each; all decode kSteps steps together, then the first alone for 8 more.
void check_graph_replays(const std::string& model_dir, const std::vector<int32_t>& prompt_lens,
                         int64_t kSteps, int64_t min_captures) {
  auto eager_backend = cuda_backend_with_graphs(false), graph_backend = cuda_backend_with_graphs(true);
  DeepseekV3 eager(model_dir, *eager_backend), graphed(model_dir, *graph_backend);
  const ModelConfig& c = eager.config();
  constexpr int64_t kPage = 4;
  const int32_t longest = *std::max_element(prompt_lens.begin(), prompt_lens.end());
  const int64_t pages_per_seq = (longest + kSteps + 10 + kPage - 1) / kPage;
  const int64_t S = int64_t(prompt_lens.size());
  LatentCache cache_e(c, *eager_backend, S * pages_per_seq, kPage, eager.cache_layers());
  LatentCache cache_g(c, *graph_backend, S * pages_per_seq, kPage, graphed.cache_layers());

  std::mt19937_64 rng(test::time_seed("graph replay prompts"));
  std::vector<SequenceChunk> chunks(static_cast<size_t>(S));
  for (int64_t s = 0; s < S; ++s) {
    for (int32_t i = 0; i < prompt_lens[size_t(s)]; ++i)
      chunks[size_t(s)].tokens.push_back(int32_t(rng() % uint64_t(c.vocab_size)));
    for (int64_t p = 0; p < pages_per_seq; ++p)
      chunks[size_t(s)].pages.push_back(int32_t(s * pages_per_seq + p));
  }
  ForwardOutput oe = eager.forward(chunks, cache_e), og = graphed.forward(chunks, cache_g);
  std::vector<float> le = to_host(*eager_backend, oe.logits), lg = to_host(*graph_backend, og.logits);
  ASSERT_EQ(le, lg) << "prefill differs";  // prefill is never captured: the same eager path on both

  // Decode: every sequence for kSteps steps, then the first alone (another batch shape), feeding both models
  // the eager model's greedy tokens.
  for (int64_t step = 0; step < kSteps + 8; ++step) {
    const int64_t active = step < kSteps ? S : 1;
    std::vector<SequenceChunk> dec(static_cast<size_t>(active));
    for (int64_t s = 0; s < active; ++s) {
      SequenceChunk& ch = chunks[size_t(s)];
      const float* row = le.data() + s * c.vocab_size;
      const int32_t next = int32_t(std::max_element(row, row + c.vocab_size) - row);
      ch.start_pos += int32_t(ch.tokens.size());
      ch.tokens = {next};
      dec[size_t(s)] = ch;
      // Only the pages the sequence covers so far: the page table widens as it grows.
      const int64_t need = (ch.start_pos + 1 + kPage - 1) / kPage;
      dec[size_t(s)].pages.resize(size_t(need));
    }
    oe = eager.forward(dec, cache_e);
    og = graphed.forward(dec, cache_g);
    le = to_host(*eager_backend, oe.logits);
    lg = to_host(*graph_backend, og.logits);
    ASSERT_EQ(le.size(), lg.size());
    const double diff = test::max_abs_diff(le.data(), lg.data(), int64_t(le.size()));
    ASSERT_EQ(diff, 0.0) << "step " << step << " (" << active << " sequences, context "
                         << dec[0].start_pos + 1 << "): graph replay differs from the eager step";
    std::vector<float> he = to_host(*eager_backend, oe.hidden), hg = to_host(*graph_backend, og.hidden);
    ASSERT_EQ(he, hg) << "step " << step << ": hidden states differ";
  }
  const auto& st = graphed.graph_stats();
  std::printf("graphs: %lld captured, %lld replays\n", static_cast<long long>(st.captures),
              static_cast<long long>(st.replays));
  EXPECT_GE(st.captures, min_captures);
  EXPECT_GE(st.replays, kSteps - 4);
  EXPECT_EQ(eager.graph_stats().captures, 0);
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

// One long sequence replayed across many 64-position attention tiles inside one page-table width (contexts
// 131..230 with width 64 pages = 256 positions): a replay must not keep the capture-time split of the
// sequence (which covered the first ~192 positions).
TEST(CudaGraph, LongContextReplaysEqualEagerSteps) {
  MOE_REQUIRE_GPU();
  check_graph_replays(test::kTinyModel, {130}, 100, 1);  // one shape: one capture, ~100 replays
}

}  // namespace
}  // namespace moe
