// DeepSeek-V3.2 (DeepSeek Sparse Attention) against HF transformers' float64 references (tests/data/tiny-dsv32,
// see its reference.json): logits of a dense prompt (9 tokens <= index_topk 16) and two sparse ones (40, 110),
// greedy continuations, the indexer's top-k sets against a float64 recomputation, decode steps against prefill.
// The indexer scores in F32 (as HF does); the fixture's smallest relative gap at a top-k boundary is 4.2e-4, far
// above F32's ~1e-6, so the sets must match exactly, and the logits to the V3 path's precision.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "backend/backend.h"
#include "engine/generator.h"
#include "engine/replay_backend.h"
#include "io/checkpoint.h"
#include "model/deepseek_v3.h"
#include "test_util.h"

namespace moe {
namespace {

constexpr double kMaxLogitError = 1e-3;  // the bound; measured errors are printed

class V32Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    backend_ = make_cpu_backend().release();
    model_ = new DeepseekV3(test::kTinyV32Model, *backend_);
    reference_ = new SafetensorsFile(test::kV32ReferenceTensors);
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete model_;
    delete backend_;
  }
  static std::vector<test::ReferenceCase> cases() { return test::load_reference_cases(test::kV32ReferenceJson); }
  static TensorView ref_logits(size_t i) {
    const SafetensorsEntry* e = reference_->find("case" + std::to_string(i) + ".logits");
    EXPECT_NE(e, nullptr);
    return reference_->view(*e);
  }
  static std::vector<int32_t> pages(int64_t n) {
    std::vector<int32_t> p(static_cast<size_t>(n));
    std::iota(p.begin(), p.end(), 0);
    return p;
  }
  // One prefill of every token with all logits.
  static ForwardOutput prefill(const std::vector<int32_t>& tokens, LatentCache& cache) {
    return model_->forward({SequenceChunk{tokens, 0, pages(cache.num_pages()), true}}, cache);
  }

  static Backend* backend_;
  static DeepseekV3* model_;
  static SafetensorsFile* reference_;
};
Backend* V32Test::backend_ = nullptr;
DeepseekV3* V32Test::model_ = nullptr;
SafetensorsFile* V32Test::reference_ = nullptr;

struct Errors {
  double max_abs = 0, rel_l2 = 0;
};
Errors compare(const float* got, const float* ref, int64_t n) {
  double num = 0, den = 0;
  Errors e;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(got[i]) - double(ref[i]);
    e.max_abs = std::max(e.max_abs, std::fabs(d));
    num += d * d;
    den += double(ref[i]) * ref[i];
  }
  e.rel_l2 = std::sqrt(num / den);
  return e;
}

TEST_F(V32Test, ConfigAndWeights) {
  const ModelConfig& c = model_->config();
  EXPECT_EQ(c.architecture, "DeepseekV32ForCausalLM");
  ASSERT_TRUE(c.sparse_attention());
  EXPECT_EQ(c.indexer->n_heads, 8);
  EXPECT_EQ(c.indexer->head_dim, 32);
  EXPECT_EQ(c.indexer->topk, 16);
  for (const auto& l : model_->weights().layers) ASSERT_TRUE(l.attn.indexer.has_value());
  LatentCache cache(c, *backend_, 2, 16, model_->cache_layers());
  EXPECT_TRUE(cache.has_index_keys());
  EXPECT_EQ(cache.index_layer(0).shape, (Shape{2, 16, 32}));
  EXPECT_EQ(cache.bytes_per_token(), 3 * (80 + 16 + 32) * 4);
}

TEST_F(V32Test, LogitsMatchHf) {
  const auto cs = cases();
  ASSERT_EQ(cs.size(), 3u);
  for (size_t i = 0; i < cs.size(); ++i) {
    const int64_t T = int64_t(cs[i].input_ids.size()), page = 16;
    LatentCache cache(model_->config(), *backend_, pages_for(T, page), page, model_->cache_layers());
    const ForwardOutput out = prefill(cs[i].input_ids, cache);
    const TensorView ref = ref_logits(i);
    ASSERT_EQ(out.logits.shape(), ref.shape);
    const Errors e = compare(out.logits.as<float>(), ref.as<float>(), ref.numel());
    std::printf("case%zu (%lld tokens, %s): logits max abs error %.3g, relative L2 %.3g\n", i, (long long)T,
                T <= 16 ? "dense" : "sparse", e.max_abs, e.rel_l2);
    EXPECT_LE(e.max_abs, kMaxLogitError) << "case " << i;
    EXPECT_LE(e.rel_l2, kMaxLogitError) << "case " << i;
    RecordProperty("case" + std::to_string(i) + ".max_abs_error", std::to_string(e.max_abs));
    ASSERT_EQ(out.index_topk.size(), 3u);  // one selection per layer
  }
}

// Greedy decoding through the Generator (prefill, then decode steps over the latent and index caches) gives HF's
// continuations. The smallest top-1 margin along our own greedy path is printed: a mismatch with a margin below
// the logits' error would be a near-tie, not a bug.
TEST_F(V32Test, GreedyContinuationsMatchHf) {
  for (const auto& c : cases()) {
    Generator gen(*model_, int64_t(c.input_ids.size() + c.greedy_continuation.size()) + 1, 8);
    GenerateOptions opts;
    opts.max_new_tokens = int32_t(c.greedy_continuation.size());
    const std::vector<int32_t> got = gen.generate(c.input_ids, opts);
    // The margins along the same path, step by step.
    const int64_t page = 8, total = int64_t(c.input_ids.size() + got.size());
    LatentCache cache(model_->config(), *backend_, pages_for(total, page), page, model_->cache_layers());
    std::vector<int32_t> seq = c.input_ids;
    double min_margin = INFINITY;
    int32_t start = 0;
    std::vector<int32_t> tokens = seq;
    for (size_t step = 0; step < got.size(); ++step) {
      ForwardOutput out = model_->forward({SequenceChunk{tokens, start, pages(cache.num_pages()), false}}, cache);
      const float* row = out.logits.as<float>();
      const int64_t V = model_->config().vocab_size;
      std::vector<float> sorted(row, row + V);
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
      min_margin = std::min(min_margin, double(sorted[0] - sorted[1]));
      const int32_t next = int32_t(std::max_element(row, row + V) - row);
      EXPECT_EQ(next, got[step]) << "step " << step;
      start += int32_t(tokens.size());
      tokens = {next};
    }
    std::printf("prompt of %zu tokens: continuation %s, smallest top-1 margin %.3g\n", c.input_ids.size(),
                got == c.greedy_continuation ? "identical" : "DIFFERENT", min_margin);
    EXPECT_EQ(got, c.greedy_continuation);
  }
}

// ---- The indexer of layer 0 in float64, from the checkpoint alone (its input is the embedding, normed) ----
std::vector<double> load_vec(const Checkpoint& ck, const std::string& name) {
  const TensorView v = ck.get(name);
  std::vector<double> out(static_cast<size_t>(v.numel()));
  for (int64_t i = 0; i < v.numel(); ++i)
    out[size_t(i)] = v.dtype == DType::F32 ? double(v.as<const float>()[i]) : double(bf16_to_float(v.as<const uint16_t>()[i]));
  return out;
}
// y = W x for W [N, K] row-major.
std::vector<double> matvec(const std::vector<double>& w, const std::vector<double>& x) {
  const size_t K = x.size(), N = w.size() / K;
  std::vector<double> y(N, 0.0);
  for (size_t n = 0; n < N; ++n)
    for (size_t k = 0; k < K; ++k) y[n] += w[n * K + k] * x[k];
  return y;
}
std::vector<double> rms_norm(const std::vector<double>& x, const std::vector<double>& w, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / double(x.size()) + eps);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = w[i] * x[i] * inv;
  return y;
}
// Half-split rope (HF's rotate_half) on v[0 .. dr).
void rope_half(double* v, int dr, int pos, double theta) {
  for (int i = 0; i < dr / 2; ++i) {
    const double a = pos * std::pow(theta, -2.0 * i / dr), c = std::cos(a), s = std::sin(a);
    const double x1 = v[i], x2 = v[i + dr / 2];
    v[i] = x1 * c - x2 * s;
    v[i + dr / 2] = x2 * c + x1 * s;
  }
}
// scores[t][j] for j <= t.
std::vector<std::vector<double>> layer0_index_scores(const ModelConfig& c, const std::vector<int32_t>& ids) {
  const Checkpoint ck(test::kTinyV32Model);
  const std::string p = "model.layers.0.", ix = p + "self_attn.indexer.";
  const auto embed = load_vec(ck, "model.embed_tokens.weight"), in_norm = load_vec(ck, p + "input_layernorm.weight");
  const auto q_a = load_vec(ck, p + "self_attn.q_a_proj.weight"), q_a_norm = load_vec(ck, p + "self_attn.q_a_layernorm.weight");
  const auto wq_b = load_vec(ck, ix + "wq_b.weight"), wk = load_vec(ck, ix + "wk.weight");
  const auto kn_w = load_vec(ck, ix + "k_norm.weight"), kn_b = load_vec(ck, ix + "k_norm.bias");
  const auto wproj = load_vec(ck, ix + "weights_proj.weight");
  const int D = int(c.hidden_size), Hi = int(c.indexer->n_heads), Di = int(c.indexer->head_dim);
  const int dr = int(c.qk_rope_head_dim), T = int(ids.size());
  std::vector<std::vector<double>> q(T), k(T), w(T);
  for (int t = 0; t < T; ++t) {
    std::vector<double> e(embed.begin() + int64_t(ids[t]) * D, embed.begin() + int64_t(ids[t] + 1) * D);
    const auto x = rms_norm(e, in_norm, c.rms_norm_eps);
    q[t] = matvec(wq_b, rms_norm(matvec(q_a, x), q_a_norm, 1e-6));
    for (int h = 0; h < Hi; ++h) rope_half(q[t].data() + h * Di, dr, t, c.rope_theta);
    auto kt = matvec(wk, x);
    double mean = 0, var = 0;
    for (double v : kt) mean += v;
    mean /= Di;
    for (double v : kt) var += (v - mean) * (v - mean);
    var /= Di;
    for (int i = 0; i < Di; ++i) kt[i] = (kt[i] - mean) / std::sqrt(var + 1e-6) * kn_w[i] + kn_b[i];
    rope_half(kt.data(), dr, t, c.rope_theta);
    k[t] = kt;
    w[t] = matvec(wproj, x);
  }
  std::vector<std::vector<double>> s(T);
  for (int t = 0; t < T; ++t)
    for (int j = 0; j <= t; ++j) {
      double sum = 0;
      for (int h = 0; h < Hi; ++h) {
        double d = 0;
        for (int i = 0; i < Di; ++i) d += q[t][h * Di + i] * k[j][i];
        sum += std::max(0.0, d / std::sqrt(double(Di))) * w[t][h] / std::sqrt(double(Hi));
      }
      s[t].push_back(sum);
    }
  return s;
}

// Layer 0's selections equal the float64 top-k; every layer's rows are well formed (ascending, -1 padded, all
// visible positions while there are at most 16).
TEST_F(V32Test, IndexTopkSetsMatchFloat64Indexer) {
  const auto cs = cases();
  const int64_t K = model_->config().indexer->topk;
  for (size_t ci = 0; ci < cs.size(); ++ci) {
    const auto& ids = cs[ci].input_ids;
    const int64_t T = int64_t(ids.size()), page = 16;
    LatentCache cache(model_->config(), *backend_, pages_for(T, page), page, model_->cache_layers());
    const ForwardOutput out = prefill(ids, cache);
    for (const Tensor& sel : out.index_topk) {
      ASSERT_EQ(sel.shape(), (Shape{T, K}));
      for (int64_t t = 0; t < T; ++t) {
        const int32_t* row = sel.as<int32_t>() + t * K;
        const int64_t n = std::min<int64_t>(t + 1, K);
        for (int64_t i = 0; i < K; ++i) {
          if (i >= n) {
            EXPECT_EQ(row[i], -1);
            continue;
          }
          EXPECT_TRUE(row[i] >= 0 && row[i] <= t && (i == 0 || row[i] > row[i - 1])) << "t " << t;
          if (t < K) {
            EXPECT_EQ(row[i], i);  // dense: every visible position
          }
        }
      }
    }
    const auto scores = layer0_index_scores(model_->config(), ids);
    double min_gap = INFINITY;
    int64_t sparse_rows = 0;
    for (int64_t t = K; t < T; ++t) {
      std::vector<int32_t> order(static_cast<size_t>(t + 1));
      std::iota(order.begin(), order.end(), 0);
      const auto& s = scores[size_t(t)];
      std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return s[a] > s[b]; });
      min_gap = std::min(min_gap, (s[order[K - 1]] - s[order[K]]) / std::fabs(s[order[K - 1]]));
      std::vector<int32_t> want(order.begin(), order.begin() + K);
      std::sort(want.begin(), want.end());
      const int32_t* row = out.index_topk[0].as<int32_t>() + t * K;
      EXPECT_EQ(std::vector<int32_t>(row, row + K), want) << "case " << ci << " token " << t;
      ++sparse_rows;
    }
    if (sparse_rows)
      std::printf("case%zu layer 0: %lld sparse rows match the float64 top-%lld, smallest relative gap %.3g\n", ci,
                  (long long)sparse_rows, (long long)K, min_gap);
  }
}

// Prefill a few tokens (dense), then feed the rest one token at a time across index_topk: each step's logits are
// the prefill's (and HF's), each step's selections exactly the prefill's rows.
TEST_F(V32Test, DecodeStepsMatchPrefill) {
  const auto cs = cases();
  for (size_t ci : {size_t(1), size_t(2)}) {
    const auto& ids = cs[ci].input_ids;
    const int64_t T = int64_t(ids.size()), V = model_->config().vocab_size, page = 8;
    const int64_t K = model_->config().indexer->topk;
    LatentCache full_cache(model_->config(), *backend_, pages_for(T, page), page, model_->cache_layers());
    const ForwardOutput full = prefill(ids, full_cache);
    const TensorView ref = ref_logits(ci);
    LatentCache cache(model_->config(), *backend_, pages_for(T, page) + 3, page, model_->cache_layers());
    std::vector<int32_t> table = pages(cache.num_pages());
    std::reverse(table.begin(), table.end());  // pages out of order
    const int32_t first = 10;
    ForwardOutput out = model_->forward(
        {SequenceChunk{std::vector<int32_t>(ids.begin(), ids.begin() + first), 0, table, true}}, cache);
    double worst = compare(out.logits.as<float>(), full.logits.as<float>(), first * V).max_abs;
    for (int32_t pos = first; pos < T; ++pos) {
      out = model_->forward({SequenceChunk{{ids[size_t(pos)]}, pos, table, false}}, cache);
      worst = std::max(worst, compare(out.logits.as<float>(), full.logits.as<float>() + pos * V, V).max_abs);
      EXPECT_LE(compare(out.logits.as<float>(), ref.as<float>() + pos * V, V).max_abs, kMaxLogitError) << pos;
      ASSERT_EQ(out.index_topk.size(), full.index_topk.size());
      for (size_t l = 0; l < out.index_topk.size(); ++l) {
        const int32_t* a = out.index_topk[l].as<int32_t>();
        const int32_t* b = full.index_topk[l].as<int32_t>() + pos * K;
        EXPECT_EQ(std::vector<int32_t>(a, a + K), std::vector<int32_t>(b, b + K)) << "layer " << l << " pos " << pos;
      }
    }
    std::printf("case%zu: decode steps %d..%lld against one prefill: max abs logit difference %.3g\n", ci, first,
                (long long)T - 1, worst);
    EXPECT_LE(worst, 1e-4);
  }
}

// Two sequences in one step (pages interleaved) give what each gives alone: each token scores only its own
// sequence's keys.
TEST_F(V32Test, BatchedSequencesMatchSingleSequences) {
  const auto cs = cases();
  const int64_t page = 4, V = model_->config().vocab_size;
  LatentCache cache(model_->config(), *backend_, 64, page, model_->cache_layers());
  SequenceChunk a{cs[1].input_ids, 0, {}, true}, b{cs[2].input_ids, 0, {}, true};
  for (int32_t p = 0; p < 40; ++p) (p % 4 == 1 ? a.pages : b.pages).push_back(p);
  const ForwardOutput both = model_->forward({a, b}, cache);
  const int64_t Ta = int64_t(a.tokens.size());
  EXPECT_LE(compare(both.logits.as<float>(), ref_logits(1).as<float>(), Ta * V).max_abs, kMaxLogitError);
  EXPECT_LE(compare(both.logits.as<float>() + Ta * V, ref_logits(2).as<float>(), ref_logits(2).numel()).max_abs,
            kMaxLogitError);
}

// A backend without the DSA ops (the CUDA backend, for now) is refused when the model is built, with a message.
TEST_F(V32Test, RefusedOnABackendWithoutSparseAttention) {
  test::ReplayBackend without(*backend_);
  without.sparse_attention = false;
  try {
    DeepseekV3 model(test::kTinyV32Model, without);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("DeepseekV32ForCausalLM"), std::string::npos) << msg;
    EXPECT_NE(msg.find("not yet supported on the replay(cpu) backend"), std::string::npos) << msg;
  }
  DeepseekV3 v3(test::kTinyModel, without);  // V3 needs none of them
}

}  // namespace
}  // namespace moe
