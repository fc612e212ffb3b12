// The whole model against HF transformers' float64 references (tests/data/tiny-dsv3, see reference.json):
// logits, FP8-checkpoint logits, MTP logits and greedy continuations. The CPU path keeps activations in F32:
// each matmul rounds at ~sqrt(K) * 2^-24 ~ 1e-6 relative (K <= 512 here), and some 20 ops run in sequence,
// so logits of size ~1 should be off by ~2e-5 at most; we allow 1e-4 (the bound is 1e-3; measured
// 2026-11-23 on this CPU path: at most 4e-6).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <functional>

#include "backend/backend.h"
#include "engine/generator.h"
#include "io/checkpoint.h"
#include "model/deepseek_v3.h"
#include "test_util.h"

namespace moe {
namespace {

constexpr double kMaxLogitError = 1e-4;

class FixtureTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    backend_ = make_cpu_backend().release();
    reference_ = new SafetensorsFile(test::kReferenceTensors);
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete backend_;
  }

  // Logits for every position of `tokens` (one prefill step), and MTP logits when the model has the module.
  static void run(DeepseekV3& model, const std::vector<int32_t>& tokens, Tensor* logits, Tensor* mtp_logits) {
    const int64_t T = int64_t(tokens.size()), page = 16;
    LatentCache cache(model.config(), *backend_, pages_for(T, page), page, model.cache_layers());
    SequenceChunk chunk{tokens, 0, {}, true};
    for (int64_t p = 0; p < cache.num_pages(); ++p) chunk.pages.push_back(int32_t(p));
    ForwardOutput out = model.forward({chunk}, cache);
    *logits = out.logits;
    if (mtp_logits && T > 1) {
      SequenceChunk next{std::vector<int32_t>(tokens.begin() + 1, tokens.end()), 0, chunk.pages, true};
      *mtp_logits = model.forward_mtp({next}, out.hidden.view().slice_rows(0, T - 1), cache).logits;
    }
  }

  static void expect_close(const Tensor& got, const std::string& ref_name) {
    const SafetensorsEntry* e = reference_->find(ref_name);
    ASSERT_NE(e, nullptr) << ref_name;
    const TensorView ref = reference_->view(*e);
    ASSERT_EQ(got.shape(), ref.shape) << ref_name;
    const double err = test::max_abs_diff(got.as<float>(), ref.as<float>(), ref.numel());
    EXPECT_LE(err, kMaxLogitError) << ref_name;
    RecordProperty(ref_name + ".max_abs_error", std::to_string(err));
  }

  static Backend* backend_;
  static SafetensorsFile* reference_;
};
Backend* FixtureTest::backend_ = nullptr;
SafetensorsFile* FixtureTest::reference_ = nullptr;

TEST_F(FixtureTest, Bf16LogitsAndMtpMatchHf) {
  DeepseekV3 model(test::kTinyModel, *backend_, {.load_mtp = true});
  ASSERT_TRUE(model.has_mtp());
  const auto cases = test::load_reference_cases();
  for (size_t i = 0; i < cases.size(); ++i) {
    Tensor logits, mtp;
    run(model, cases[i].input_ids, &logits, &mtp);
    expect_close(logits, "case" + std::to_string(i) + ".logits");
    if (cases[i].input_ids.size() > 1) expect_close(mtp, "case" + std::to_string(i) + ".mtp_logits");
  }
}

TEST_F(FixtureTest, Fp8LogitsMatchHfDequantised) {
  DeepseekV3 model(test::kTinyModelFp8, *backend_);
  ASSERT_TRUE(model.weights().layers[1].attn.kv_b.is_fp8());  // FP8 stays FP8 in memory
  const auto cases = test::load_reference_cases();
  for (size_t i = 0; i < cases.size(); ++i) {
    Tensor logits;
    run(model, cases[i].input_ids, &logits, nullptr);
    expect_close(logits, "case" + std::to_string(i) + ".fp8_logits");
  }
}

TEST_F(FixtureTest, GreedyContinuationWithLatentCacheMatchesHf) {
  DeepseekV3 model(test::kTinyModel, *backend_);
  for (const auto& c : test::load_reference_cases()) {
    Generator gen(model, int64_t(c.input_ids.size() + c.greedy_continuation.size()) + 1, 8);
    GenerateOptions opts;
    opts.max_new_tokens = int32_t(c.greedy_continuation.size());
    EXPECT_EQ(gen.generate(c.input_ids, opts), c.greedy_continuation);
  }
}

// Batching must not change results: two sequences in one step (different lengths, pages interleaved)
// give the same logits as each alone.
TEST_F(FixtureTest, BatchedSequencesMatchSingleSequences) {
  DeepseekV3 model(test::kTinyModel, *backend_);
  const auto cases = test::load_reference_cases();
  const int64_t page = 4;
  LatentCache cache(model.config(), *backend_, 64, page, model.cache_layers());
  SequenceChunk a{cases[1].input_ids, 0, {}, true}, b{cases[2].input_ids, 0, {}, true};
  for (int32_t p = 0; p < 20; ++p) (p % 2 ? a.pages : b.pages).push_back(p);
  ForwardOutput both = model.forward({a, b}, cache);
  const int64_t V = model.config().vocab_size, Ta = int64_t(a.tokens.size()), Tb = int64_t(b.tokens.size());
  ASSERT_EQ(both.logits.dim(0), Ta + Tb);
  for (size_t i : {size_t(1), size_t(2)}) {
    const SafetensorsEntry* e = reference_->find("case" + std::to_string(i) + ".logits");
    const TensorView ref = reference_->view(*e);
    const float* got = both.logits.as<float>() + (i == 1 ? 0 : Ta * V);
    EXPECT_LE(test::max_abs_diff(got, ref.as<float>(), ref.numel()), kMaxLogitError);
  }
}

// Decoding in chunks (prefill 5 tokens, then 1 at a time, then 3) gives the same logits as one prefill.
TEST_F(FixtureTest, ChunkedPrefillMatchesSinglePrefill) {
  DeepseekV3 model(test::kTinyModel, *backend_);
  const auto cases = test::load_reference_cases();
  const std::vector<int32_t>& tokens = cases[2].input_ids;
  const SafetensorsEntry* e = reference_->find("case2.logits");
  const TensorView ref = reference_->view(*e);
  const int64_t V = model.config().vocab_size, page = 8;
  LatentCache cache(model.config(), *backend_, 8, page, model.cache_layers());
  std::vector<int32_t> pages{7, 3, 5, 1, 0, 2};
  size_t pos = 0;
  for (size_t len : {size_t(5), size_t(1), size_t(1), size_t(3), tokens.size() - 10}) {
    SequenceChunk c{std::vector<int32_t>(tokens.begin() + std::ptrdiff_t(pos), tokens.begin() + std::ptrdiff_t(pos + len)),
                    int32_t(pos), pages, true};
    ForwardOutput out = model.forward({c}, cache);
    EXPECT_LE(test::max_abs_diff(out.logits.as<float>(), ref.as<float>() + int64_t(pos) * V, int64_t(len) * V), kMaxLogitError)
        << "chunk at " << pos;
    pos += len;
  }
}

// Every weight of a ModelWeights, for copying them out of the checkpoint's memory map.
void for_each_weight(MlpWeights& m, const std::function<void(Weight&)>& fn) {
  fn(m.gate);
  fn(m.up);
  fn(m.down);
}
void for_each_weight(DecoderLayerWeights& l, const std::function<void(Weight&)>& fn) {
  for (Weight* w : {&l.input_norm, &l.post_attention_norm, &l.attn.q_a, &l.attn.q_a_norm, &l.attn.q_b, &l.attn.q_proj,
                    &l.attn.kv_a, &l.attn.kv_a_norm, &l.attn.kv_b, &l.attn.o_proj, &l.router})
    fn(*w);
  for_each_weight(l.dense, fn);
  for (MlpWeights& e : l.experts.experts) for_each_weight(e, fn);
  if (l.shared_experts) for_each_weight(*l.shared_experts, fn);
}

// A model built from weights in memory computes what the one loaded from the directory does. The weights are
// loaded, then copied into host tensors this test owns and the checkpoint is closed, so the second model
// reads nothing from the checkpoint's files: the logits and MTP logits must be bit-identical.
TEST_F(FixtureTest, ModelFromWeightsInMemoryMatchesModelFromDirectory) {
  DeepseekV3 from_dir(test::kTinyModel, *backend_, {.load_mtp = true});
  ASSERT_TRUE(from_dir.has_checkpoint());
  std::vector<Tensor> owned;
  ModelConfig config = ModelConfig::load(test::kTinyModel);
  ModelWeights weights;
  {
    const Checkpoint ckpt(test::kTinyModel);
    weights = ModelWeights::load(ckpt, config, *backend_, true);
    auto copy = [&](TensorView& v) {
      if (!v.data) return;
      Tensor t = Tensor::host(v.dtype, v.shape);
      std::memcpy(t.data(), v.data, v.nbytes());
      v = t.view();
      owned.push_back(std::move(t));
    };
    auto copy_weight = [&](Weight& w) {
      copy(w.w);
      copy(w.scale_inv);
    };
    for (Weight* w : {&weights.embed, &weights.final_norm, &weights.lm_head}) copy_weight(*w);
    for (DecoderLayerWeights& l : weights.layers) for_each_weight(l, copy_weight);
    ASSERT_TRUE(weights.mtp.has_value());
    for (Weight* w : {&weights.mtp->enorm, &weights.mtp->hnorm, &weights.mtp->eh_proj, &weights.mtp->shared_head_norm,
                      &weights.mtp->head})
      copy_weight(*w);
    for_each_weight(weights.mtp->layer, copy_weight);
  }
  DeepseekV3 from_memory(std::move(config), std::move(weights), *backend_, {});
  EXPECT_FALSE(from_memory.has_checkpoint());
  EXPECT_THROW(from_memory.checkpoint(), Error);
  ASSERT_TRUE(from_memory.has_mtp());
  for (const auto& c : test::load_reference_cases()) {
    Tensor a, a_mtp, b, b_mtp;
    run(from_dir, c.input_ids, &a, &a_mtp);
    run(from_memory, c.input_ids, &b, &b_mtp);
    ASSERT_EQ(a.shape(), b.shape());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.view().nbytes()), 0);
    if (c.input_ids.size() > 1) {
      ASSERT_EQ(a_mtp.shape(), b_mtp.shape());
      EXPECT_EQ(std::memcmp(a_mtp.data(), b_mtp.data(), a_mtp.view().nbytes()), 0);
    }
  }
}

}  // namespace
}  // namespace moe
