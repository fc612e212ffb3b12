// DeepSeek-V3.2's sparse attention on the GPU: each indexer op against the CPU backend, then the tiny V3.2
// fixture (tests/data/tiny-dsv32: index_topk 16, prompts of 9, 40 and 110 tokens) against HF's float64 logits and
// greedy continuations, with the GPU's per-layer top-k sets compared to the CPU's.
// Tolerances: the index cache is F32 on both sides (model/latent_cache.h); the GPU's LayerNorm sums in F32 where
// the CPU sums in double: ~1e-6 relative, bound 1e-5. Scores, top-k and the sparse attention are compared on
// inputs both sides hold exactly (the latent cache's BF16 values copied into the CPU's F32 cache), so only F32
// summation order differs: scores within 1e-5 relative, identical top-k sets (the random scores have no ties
// closer than F32 rounding; scores rounded to quarters test the lower-position rule on exact ties, -0.0 and +0.0
// included), attention within 1e-4.
// The whole model's prefill: the V3 bounds (relative L2 <= 1e-2, top-1 >= 99 %) where every layer's top-k set equals
// the CPU's, layer 0's always. Greedy decoding: test_cuda_dsa_diag.cpp (the discrete choices forced, then free).
#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "cuda_test_util.h"
#include "engine/generator.h"
#include "engine/page_allocator.h"
#include "engine/step_executor.h"
#include "io/safetensors.h"
#include "model/deepseek_v3.h"
#include "test_util.h"

namespace moe {
namespace {

using test::rel_l2;

class CudaDsa : public test::GpuVsCpu {
 protected:
  // Two sequences on shuffled pages of 16: 150 cached positions of which the last 3 are new, and 40 new of 40.
  BatchPlan plan() {
    std::vector<int32_t> ids(14);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng_);
    SequenceChunk a, b;
    a.pages.assign(ids.begin(), ids.begin() + 10);
    b.pages.assign(ids.begin() + 10, ids.end());
    a.start_pos = 147;
    a.tokens.assign(3, 0);
    b.tokens.assign(40, 0);
    return plan_batch({a, b}, kPage);
  }
  static constexpr int64_t kPage = 16, kPages = 14, Hi = 8, Di = 64, dr = 16;
  RopeParams rope() const {
    RopeParams p;
    for (int64_t i = 0; i < dr / 2; ++i) p.inv_freq.push_back(std::pow(10000.0, -2.0 * double(i) / double(dr)));
    p.attn_factor = 1.0;
    return p;
  }
  // A BF16 device tensor and its F32 host copy holding the same values.
  std::pair<Tensor, Tensor> same_values(Shape shape) {
    Tensor h16 = test::random_host(rng_, DType::BF16, shape);
    Tensor h32 = Tensor::host(DType::F32, shape);
    for (int64_t i = 0; i < h16.numel(); ++i) h32.as<float>()[i] = bf16_to_float(h16.as<uint16_t>()[i]);
    return {test::to_device(*gpu_, h16), std::move(h32)};
  }
};

TEST_F(CudaDsa, IndexCacheAndQueryRope) {
  const BatchPlan p = plan();
  const int64_t T = p.num_tokens();
  const DeviceBatch cb = cpu_->upload_batch(p), gb = gpu_->upload_batch(p);
  Tensor k = test::random_host(rng_, DType::F32, {T, Di}, 3.0f);
  Tensor w = test::random_host(rng_, DType::BF16, {Di}, 0.5f), b = test::random_host(rng_, DType::BF16, {Di}, 0.5f);
  Weight nw, nb;
  nw.w = w.view();
  nb.w = b.view();
  Tensor cc = Tensor::host(DType::F32, {kPages, kPage, Di});
  Tensor gc = gpu_->alloc(DType::F32, {kPages, kPage, Di});
  cpu_->dsa_write_index_cache(k, nw, nb, 1e-6f, rope(), cb, cc);
  gpu_->dsa_write_index_cache(test::to_device(*gpu_, k), gpu_->upload_weight(nw), gpu_->upload_weight(nb), 1e-6f,
                              rope(), gb, gc);
  // Only the written slots are compared (the rest stay zero on both sides).
  const std::vector<float> got = test::to_host_f32(*gpu_, gc);
  std::vector<float> g, c;
  for (int32_t slot : p.slots)
    for (int64_t i = 0; i < Di; ++i) {
      g.push_back(got[size_t(slot * Di + i)]);
      c.push_back(cc.as<float>()[slot * Di + i]);
    }
  EXPECT_LE(rel_l2(g.data(), c.data(), int64_t(c.size())), 1e-5) << "index cache";

  Tensor q = test::random_host(rng_, DType::F32, {T, Hi, Di});
  Tensor gq = test::to_device(*gpu_, q);
  cpu_->dsa_rope_q(q, rope(), cb);
  gpu_->dsa_rope_q(gq, rope(), gb);
  EXPECT_LE(rel_l2(test::to_host_f32(*gpu_, gq).data(), q.as<float>(), q.numel()), 1e-6) << "rope_q";
}

TEST_F(CudaDsa, ScoresTopkAndSparseAttention) {
  const BatchPlan p = plan();
  const int64_t T = p.num_tokens(), L = int64_t(p.max_pages) * p.page_size, K = 16;
  const DeviceBatch cb = cpu_->upload_batch(p), gb = gpu_->upload_batch(p);
  Tensor ccache = test::random_host(rng_, DType::F32, {kPages, kPage, Di});
  Tensor gcache = test::to_device(*gpu_, ccache);
  Tensor q = test::random_host(rng_, DType::F32, {T, Hi, Di});
  Tensor wts = test::random_host(rng_, DType::F32, {T, Hi});
  Tensor cs = Tensor::host(DType::F32, {T, L}), gs = gpu_->alloc(DType::F32, {T, L});
  cpu_->dsa_index_scores(q, wts, ccache, 0.125f, 0.35f, cb, cs);
  gpu_->dsa_index_scores(test::to_device(*gpu_, q), test::to_device(*gpu_, wts), gcache, 0.125f, 0.35f, gb, gs);
  const std::vector<float> got = test::to_host_f32(*gpu_, gs);
  std::vector<float> g, c;  // the visible scores (past the position both hold -inf)
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < L; ++j) {
      const float cv = cs.as<float>()[t * L + j], gv = got[size_t(t * L + j)];
      if (std::isinf(cv)) {
        EXPECT_TRUE(std::isinf(gv) && gv < 0) << "t " << t << " j " << j;
      } else {
        c.push_back(cv);
        g.push_back(gv);
      }
    }
  EXPECT_LE(rel_l2(g.data(), c.data(), int64_t(c.size())), 1e-5) << "scores";

  // Top-k on the same scores: the CPU's, and a version with many exact ties (scores rounded to 1/4).
  for (bool ties : {false, true}) {
    Tensor s = Tensor::host(DType::F32, {T, L});
    for (int64_t i = 0; i < T * L; ++i) {
      const float v = cs.as<float>()[i];
      s.as<float>()[i] = ties && !std::isinf(v) ? std::round(v * 4.0f) / 4.0f : v;
    }
    Tensor ci = Tensor::host(DType::I32, {T, K}), gi = gpu_->alloc(DType::I32, {T, K});
    cpu_->dsa_topk(s, cb, ci);
    gpu_->dsa_topk(test::to_device(*gpu_, s), gb, gi);
    std::vector<int32_t> gh(size_t(T * K));
    gpu_->copy_to_host(gi, gh.data());
    EXPECT_TRUE(std::equal(gh.begin(), gh.end(), ci.as<int32_t>())) << "top-k sets, ties " << ties;
  }

  // Sparse attention over the CPU's selection, on a latent cache both sides hold exactly.
  const int64_t H = 5, r = 80, dr2 = 16, W = r + dr2;
  auto [glat, clat] = same_values({kPages, kPage, W});
  auto [gqf, cqf] = same_values({T, H, W});
  Tensor ci = Tensor::host(DType::I32, {T, K});
  cpu_->dsa_topk(cs, cb, ci);
  Tensor co = Tensor::host(DType::F32, {T, H, r}), clse = Tensor::host(DType::F32, {T, H});
  Tensor go = gpu_->alloc(DType::F32, {T, H, r}), glse = gpu_->alloc(DType::F32, {T, H});
  cpu_->mla_sparse_latent_attention(cqf, clat, 0.1f, cb, ci, co, clse);
  gpu_->mla_sparse_latent_attention(gqf, glat, 0.1f, gb, test::to_device(*gpu_, ci), go, glse);
  EXPECT_LE(rel_l2(test::to_host_f32(*gpu_, go).data(), co.as<float>(), co.numel()), 1e-4) << "sparse attention";
  EXPECT_LE(rel_l2(test::to_host_f32(*gpu_, glse).data(), clse.as<float>(), clse.numel()), 1e-5) << "lse";
}

// The sparse attention at DeepSeek-V3's widths (the tensor-core split-KV kernel reading its positions from the
// list): a 3000-token sequence decoding one token and a 700-token one with a 5-token chunk, each token attending a
// random ascending subset of up to 512 of its visible positions (splits cut the list), 16 and 128 heads, on a
// cache both sides hold exactly. Error sources: the BF16 softmax weights P on the tensor cores (~1e-3 rms
// relative, averaged over positions), as in test_cuda_mla.cpp's AttentionShapes: bound 1e-2.
TEST_F(CudaDsa, SparseAttentionTensorCoreKernel) {
  const int64_t page = 64, K = 512, r = 512, dr2 = 64, W = r + dr2;
  SequenceChunk a, b;
  for (int32_t p = 0; p < 47; ++p) a.pages.push_back(p);
  for (int32_t p = 47; p < 58; ++p) b.pages.push_back(p);
  a.start_pos = 2999;
  a.tokens.assign(1, 0);
  b.start_pos = 695;
  b.tokens.assign(5, 0);
  const BatchPlan p = plan_batch({a, b}, page);
  const int64_t T = p.num_tokens();
  const DeviceBatch cb = cpu_->upload_batch(p), gb = gpu_->upload_batch(p);
  Tensor ci = Tensor::host(DType::I32, {T, K});
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> all(size_t(p.positions[size_t(t)] + 1));
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng_);
    all.resize(std::min<size_t>(all.size(), size_t(K)));
    std::sort(all.begin(), all.end());
    for (int64_t k = 0; k < K; ++k) ci.as<int32_t>()[t * K + k] = k < int64_t(all.size()) ? all[size_t(k)] : -1;
  }
  auto [glat, clat] = same_values({58, page, W});
  for (int64_t H : {16, 128}) {
    auto [gqf, cqf] = same_values({T, H, W});
    Tensor co = Tensor::host(DType::F32, {T, H, r}), clse = Tensor::host(DType::F32, {T, H});
    Tensor go = gpu_->alloc(DType::F32, {T, H, r}), glse = gpu_->alloc(DType::F32, {T, H});
    cpu_->mla_sparse_latent_attention(cqf, clat, 0.07f, cb, ci, co, clse);
    gpu_->mla_sparse_latent_attention(gqf, glat, 0.07f, gb, test::to_device(*gpu_, ci), go, glse);
    const double err = rel_l2(test::to_host_f32(*gpu_, go).data(), co.as<float>(), co.numel());
    std::printf("sparse attention, %lld heads: rel L2 %.2e\n", (long long)H, err);
    EXPECT_LE(err, 1e-2) << H << " heads";
    EXPECT_LE(rel_l2(test::to_host_f32(*gpu_, glse).data(), clse.as<float>(), clse.numel()), 1e-3) << "lse";
  }
}

// The fixture model on the GPU against HF, and its top-k sets against the CPU's. Prefill GEMMs in the split
// precision (CudaOptions::Prefill::Split, ~1e-5 of F32): the default BF16 prefill GEMMs round the indexer's
// inputs by 2^-9, which moves index scores by ~1e-3 relative, past the fixture's smallest top-k gap (4.2e-4),
// and flipped 66 of the 40-token prompt's 1,920 top-k entries on the H200 (logits 0.13 from HF). Exact
// selection is what this test checks; BF16 prefill trades it for speed, as DeepSeek's FP8 indexer does.
TEST_F(CudaDsa, TinyV32MatchesHf) {
  CudaOptions split;
  split.prefill = CudaOptions::Prefill::Split;
  auto gpu = make_cuda_backend(0, split);
  DeepseekV3 gm(test::kTinyV32Model, *gpu), cm(test::kTinyV32Model, *cpu_);
  SafetensorsFile ref(test::kV32ReferenceTensors);
  const auto cases = test::load_reference_cases(test::kV32ReferenceJson);
  ASSERT_EQ(cases.size(), 3u);
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& ids = cases[i].input_ids;
    const int64_t T = int64_t(ids.size()), page = 16, V = gm.config().vocab_size;
    LatentCache gc(gm.config(), *gpu, pages_for(T, page), page, gm.cache_layers());
    LatentCache cc(cm.config(), *cpu_, pages_for(T, page), page, cm.cache_layers());
    SequenceChunk chunk{ids, 0, {}, true};
    for (int64_t p = 0; p < gc.num_pages(); ++p) chunk.pages.push_back(int32_t(p));
    const ForwardOutput go = gm.forward({chunk}, gc), co = cm.forward({chunk}, cc);
    const std::vector<float> got = test::to_host_f32(*gpu, go.logits);
    const SafetensorsEntry* e = ref.find("case" + std::to_string(i) + ".logits");
    ASSERT_NE(e, nullptr);
    const TensorView hf = ref.view(*e);
    ASSERT_EQ(int64_t(got.size()), hf.numel());
    const double err = rel_l2(got.data(), hf.as<float>(), hf.numel());
    int64_t agree = 0;
    for (int64_t t = 0; t < T; ++t) {
      const float* g = got.data() + t * V;
      const float* f = hf.as<float>() + t * V;
      agree += (std::max_element(g, g + V) - g) == (std::max_element(f, f + V) - f);
    }
    std::vector<int64_t> diffs;  // per layer: top-k entries differing from the CPU's
    ASSERT_EQ(go.index_topk.size(), co.index_topk.size());
    for (size_t l = 0; l < go.index_topk.size(); ++l) {
      const TensorView c = co.index_topk[l].view();
      std::vector<int32_t> gh(size_t(c.numel()));
      gpu->copy_to_host(go.index_topk[l].view(), gh.data());
      int64_t n = 0;
      for (int64_t k = 0; k < c.numel(); ++k) n += gh[size_t(k)] != c.as<const int32_t>()[k];
      diffs.push_back(n);
    }
    std::printf("tiny V3.2 case%zu (%lld tokens): rel L2 vs HF %.3e, top-1 %lld/%lld, top-k entries differing from "
                "the CPU's per layer:", i, (long long)T, err, (long long)agree, (long long)T);
    for (int64_t n : diffs) std::printf(" %lld", (long long)n);
    std::printf("\n");
    // Layer 0's indexer sees the embeddings through one dense layer's attention input: nothing upstream has a
    // discrete choice, so its selection must be the CPU's exactly. Later layers sit behind MoE routers whose
    // near-ties (1e-4 margins in these random fixtures, test_cuda_model.cpp) the GPU's ~1e-3 perturbation can
    // flip; a flipped expert changes the next indexer's inputs discretely. Where every layer's selection matches,
    // the V3 bounds apply to the logits and the greedy continuation.
    EXPECT_EQ(diffs[0], 0) << "case " << i;
    const bool all_match = std::all_of(diffs.begin(), diffs.end(), [](int64_t n) { return n == 0; });
    if (all_match) {
      EXPECT_LE(err, 1e-2) << "case " << i;
      EXPECT_GE(double(agree), 0.99 * double(T)) << "case " << i;
    } else {
      std::printf("  case%zu: selections differ behind a MoE layer: logits bound not applied\n", i);
    }
  }
  // Greedy continuations: CudaDsaDiagnostic.TinyV32GreedyDivergence (test_cuda_dsa_diag.cpp) decodes every case
  // with the CPU's routing and index selections forced (the GPU then picks HF's token at every step, logits within
  // the bound) and shows where the free run's discrete choices part at near-ties (the 40-token prompt: a layer-1
  // top-k boundary gap of 2.6e-3 relative under a 2.8e-3 score error).
}

// Decoding step by step, teacher-forced with HF's greedy tokens, on the CPU, the GPU eagerly and the GPU through the
// step executor's graphs (the generator's path): per step, the logits' relative L2 and max |diff| against the CPU,
// each layer's top-k set against the CPU's, and the argmax of each beside the CPU's margin between its best two
// logits. Asserted: graph replays equal the eager steps, layer 0's selections (nothing discrete upstream) equal the
// CPU's, and the CPU follows HF. Where a later layer's selection or an expert flips at a near-tie the logits part
// (CudaDsaDiagnostic separates those from arithmetic by forcing the CPU's choices): printed, not bounded here.
TEST_F(CudaDsa, DecodeStepsAgainstCpu) {
  CudaOptions split;
  split.prefill = CudaOptions::Prefill::Split;
  auto gpu = make_cuda_backend(0, split);
  DeepseekV3 gm(test::kTinyV32Model, *gpu), cm(test::kTinyV32Model, *cpu_);
  const auto cases = test::load_reference_cases(test::kV32ReferenceJson);
  StepExecutor exec(gm);
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    const int64_t T = int64_t(c.input_ids.size()), n = int64_t(c.greedy_continuation.size()), page = 8;
    const int64_t V = gm.config().vocab_size, pages = pages_for(T + n + 1, page);
    LatentCache gc(gm.config(), *gpu, pages, page, gm.cache_layers());
    LatentCache gg(gm.config(), *gpu, pages, page, gm.cache_layers());
    LatentCache cc(cm.config(), *cpu_, pages, page, cm.cache_layers());
    std::vector<int32_t> all_pages;
    for (int64_t p = 0; p < pages; ++p) all_pages.push_back(int32_t(p));
    SequenceChunk chunk{c.input_ids, 0, all_pages, false};
    (void)gm.forward({chunk}, gc);
    (void)gm.forward({chunk}, gg);
    (void)cm.forward({chunk}, cc);
    std::printf("case%zu (%lld prompt tokens, %lld steps)\n", i, (long long)T, (long long)n);
    for (int64_t s = 0; s + 1 < n; ++s) {  // feed continuation token s at position T + s: logits predict s + 1
      const SequenceChunk step{{c.greedy_continuation[size_t(s)]}, int32_t(T + s), all_pages, false};
      const ForwardOutput ge = gm.forward({step}, gc), gr = exec.forward({step}, gg), ce = cm.forward({step}, cc);
      const std::vector<float> a = test::to_host_f32(*gpu, ge.logits), b = test::to_host_f32(*gpu, gr.logits);
      const float* cl = ce.logits.view().as<const float>();
      double dmax = 0, dgraph = 0;
      for (int64_t v = 0; v < V; ++v) {
        dmax = std::max(dmax, double(std::fabs(a[size_t(v)] - cl[v])));
        dgraph = std::max(dgraph, double(std::fabs(a[size_t(v)] - b[size_t(v)])));
      }
      const int64_t ga = std::max_element(a.begin(), a.end()) - a.begin();
      const int64_t gb = std::max_element(b.begin(), b.end()) - b.begin();
      const int64_t ca = std::max_element(cl, cl + V) - cl;
      double second = -INFINITY;
      for (int64_t v = 0; v < V; ++v)
        if (v != ca) second = std::max(second, double(cl[v]));
      const double margin = double(cl[ca]) - second;
      std::string sel;
      for (size_t l = 0; l < ce.index_topk.size(); ++l) {
        const TensorView cv = ce.index_topk[l].view();
        std::vector<int32_t> gh(size_t(cv.numel()));
        gpu->copy_to_host(ge.index_topk[l].view(), gh.data());
        int64_t diff = 0;
        for (int64_t k = 0; k < cv.numel(); ++k) diff += gh[size_t(k)] != cv.as<const int32_t>()[k];
        sel += fmt::format(" {}", diff);
        if (l == 0) {
          EXPECT_EQ(diff, 0) << "case " << i << " step " << s << ": layer 0's selection";
        }
      }
      const bool flip = ga != ca;
      std::printf("  step %2lld: rel L2 %.2e max|d| %.2e graph-vs-eager %.2e | argmax gpu %lld graph %lld cpu %lld hf %d "
                  "margin %.2e | top-k diffs per layer:%s%s\n",
                  (long long)s, rel_l2(a.data(), cl, V), dmax, dgraph, (long long)ga, (long long)gb, (long long)ca,
                  c.greedy_continuation[size_t(s + 1)], margin, sel.c_str(),
                  flip ? "  FLIP" : "");
      EXPECT_EQ(ca, c.greedy_continuation[size_t(s + 1)]) << "the CPU's greedy token, case " << i << " step " << s;
      EXPECT_LE(dgraph, 1e-3 * std::max(1.0, double(std::fabs(cl[ca])))) << "graph vs eager, case " << i << " step " << s;
    }
  }
}

}  // namespace
}  // namespace moe
