// FP8 dispatch (ExpertParallel::set_fp8_dispatch, model/fp8_rows.h) on CPU ranks that are threads:
//  - the E4M3 rows with 1x128 tile scales against the bound of fp8_rows.h, element by element, at D = 7168 with a
//    wide dynamic range (an all-zero tile and tiny tiles included), and the bytes per row;
//  - one MoE layer of random FP8 experts over 2 and 4 ranks (copies, TBO) equals, bit for bit, one process
//    running the same experts on the dequantised rows (the experts see exactly E4M3(x) * scale; every other step
//    is the F32 dispatch's, which is bit-identical to one process without copies);
//  - the FP8 fixture model with FP8 dispatch against F32 dispatch: the relative L2 of the logits within the
//    project's bound for E4M3 activations (tests/cuda/test_cuda_model.cpp's W8A8 bound, sqrt(18) * 2^-4 /
//    sqrt(3): each quantisation adds relative noise of rms <= 2^-4 / sqrt(3) to the products it feeds; W8A8
//    quantises every linear's input, this only the routed experts'), top-1 agreement >= 95 % of the rows, and
//    fewer bytes sent (a dispatched row: D + 4 D / 128 bytes instead of 4 D);
//  - the error for non-FP8 experts.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "backend/backend.h"
#include "core/error.h"
#include "cuda/cuda_test_util.h"
#include "ep/ep_test_util.h"
#include "ep/thread_communicator.h"
#include "model/deepseek_v3.h"
#include "model/fp8_rows.h"
#include "test_util.h"

namespace moe {
namespace {

using test::moe_layers;

uint64_t seed_now(const char* what) {
  const uint64_t s = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  std::printf("[ seed ] %s: %llu\n", what, (unsigned long long)s);
  return s;
}

TEST(Fp8Rows, RoundTripWithinBound) {
  std::mt19937_64 rng(seed_now("Fp8Rows"));
  const int64_t rows = 6, D = 7168, tiles = fp8_row_tiles(D);
  ASSERT_EQ(tiles, 56);
  EXPECT_EQ(fp8_row_bytes(D), D + 56 * 4);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::uniform_real_distribution<float> e(-12.0f, 12.0f);
  std::vector<float> x(size_t(rows * D));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < tiles; ++b) {
      const float mag = std::exp2(e(rng));  // tiles from 2^-12 to 2^12
      for (int64_t i = b * 128; i < (b + 1) * 128; ++i) x[size_t(r * D + i)] = (r == 0 && b == 3) ? 0.0f : mag * n(rng);
    }
  x[5] = 3e4f;  // an outlier sets its tile's scale; the rest of that tile goes subnormal or to zero
  std::vector<uint8_t> q(x.size());
  std::vector<float> s(size_t(rows * tiles)), back(x.size());
  quantize_rows_e4m3(x.data(), rows, D, q.data(), s.data());
  dequantize_rows_e4m3(q.data(), s.data(), rows, D, back.data());
  int64_t bad = 0, exact = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < D; ++i) {
      const size_t k = size_t(r * D + i);
      const double scale = s[size_t(r * tiles + i / 128)];
      const double bound = std::ldexp(std::fabs(double(x[k])), -4) * (1 + 1e-6) + std::ldexp(scale, -10);
      bad += std::fabs(double(back[k]) - double(x[k])) > bound;
      exact += back[k] == x[k];
    }
  EXPECT_EQ(bad, 0) << "elements beyond 2^-4 |x| + 2^-10 scale";
  EXPECT_EQ(s[3], 1.0f) << "an all-zero tile";
  for (int64_t i = 3 * 128; i < 4 * 128; ++i) EXPECT_EQ(back[size_t(i)], 0.0f);
  EXPECT_EQ(back[5], 3e4f) << "a tile's largest value is exact (448 * scale)";
  std::printf("%lld of %lld values exact after the round trip\n", (long long)exact, (long long)(rows * D));
}

std::vector<float> to_f32(const Tensor& t) {
  std::vector<float> v(size_t(t.numel()));
  std::memcpy(v.data(), t.data(), v.size() * sizeof(float));
  return v;
}

// One MoE layer of E random FP8 experts over R thread ranks with FP8 dispatch against one process on the
// dequantised rows: bit-identical.
TEST(Fp8Dispatch, LayerEqualsOneProcessOnDequantisedRows) {
  std::mt19937_64 rng(seed_now("Fp8Dispatch.Layer"));
  const int64_t E = 16, D = 384, I = 128, T = 29, K = 4;
  const test::HostExperts experts = test::random_experts(rng, E, D, I, true);
  const Tensor x = test::random_host(rng, DType::F32, {T, D});
  const Tensor plus = test::random_host(rng, DType::F32, {T, D});
  Tensor ids = Tensor::host(DType::I32, {T, K}), w = Tensor::host(DType::F32, {T, K});
  std::vector<int32_t> all(static_cast<size_t>(E));
  for (int32_t e = 0; e < int32_t(E); ++e) all[size_t(e)] = e;
  std::uniform_real_distribution<float> u(0.1f, 1.0f);
  for (int64_t t = 0; t < T; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    for (int64_t j = 0; j < K; ++j) ids.as<int32_t>()[t * K + j] = all[size_t(j)], w.as<float>()[t * K + j] = u(rng);
  }
  // The reference: one process, the experts on E4M3(x) * scale.
  std::vector<uint8_t> q(size_t(T * D));
  std::vector<float> s(size_t(T * fp8_row_tiles(D)));
  Tensor xq = Tensor::host(DType::F32, {T, D});
  quantize_rows_e4m3(x.as<float>(), T, D, q.data(), s.data());
  dequantize_rows_e4m3(q.data(), s.data(), T, D, xq.as<float>());
  auto cpu = make_cpu_backend({1});
  const ExpertWeights all_experts = test::upload_experts(*cpu, experts.weights);
  Tensor want = cpu->alloc(DType::F32, {T, D}), f32 = cpu->alloc(DType::F32, {T, D});
  cpu->moe_experts(xq, all_experts, ids, w, plus, want);
  cpu->moe_experts(x, all_experts, ids, w, plus, f32);
  const std::vector<float> ref = to_f32(want), ref_f32 = to_f32(f32);
  for (auto [ranks, redundant, tbo] : {std::tuple{2, 0, false}, std::tuple{2, 2, true}, std::tuple{4, 4, false}}) {
    const std::string tag = std::to_string(ranks) + " ranks, " + std::to_string(redundant) + " copies" +
                            (tbo ? ", tbo" : "");
    std::vector<std::vector<float>> got(static_cast<size_t>(ranks));
    std::vector<uint64_t> bytes(static_cast<size_t>(ranks));
    test::run_ranks(ranks, [&](dist::Communicator& comm) {
      auto b = make_cpu_backend({1});
      ExpertParallel ep(comm, ExpertPlacement::initial({true}, int32_t(E), ranks, redundant));
      ep.set_fp8_dispatch(true);
      ep.set_two_micro_batch(tbo);
      ExpertWeights mine;
      for (int32_t e : ep.placement().local_experts(0, comm.rank())) mine.experts.push_back(experts.weights.experts[size_t(e)]);
      const ExpertWeights local = test::upload_experts(*b, mine);
      Tensor out = b->alloc(DType::F32, {T, D});
      ep.moe(*b, 0, local, x, ids, w, plus, out);
      got[size_t(comm.rank())] = to_f32(out);
      bytes[size_t(comm.rank())] = ep.bytes_sent();
    });
    double vs_f32 = 0, scale = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      vs_f32 = std::max(vs_f32, std::fabs(double(ref[i]) - ref_f32[i]));
      scale = std::max(scale, std::fabs(double(ref_f32[i])));
    }
    for (int r = 0; r < ranks; ++r) {
      double diff = 0;
      for (size_t i = 0; i < ref.size(); ++i) diff = std::max(diff, std::fabs(double(got[size_t(r)][i]) - ref[i]));
      // Copies split an expert's rows, which can move the CPU matmul to another path (see test_expert_parallel.cpp).
      if (redundant == 0)
        EXPECT_EQ(diff, 0.0) << tag << ", rank " << r;
      else
        EXPECT_LE(diff / scale, 1e-5) << tag << ", rank " << r;
    }
    std::printf("%s: FP8 dispatch vs F32 dispatch max |diff| / max |out| %.3e; bytes sent by rank 0: %llu\n",
                tag.c_str(), vs_f32 / scale, (unsigned long long)bytes[0]);
  }
}

std::vector<float> prefill(DeepseekV3& model, const std::vector<int32_t>& tokens) {
  const int64_t page = 16, T = int64_t(tokens.size());
  LatentCache cache(model.config(), model.backend(), (T + page - 1) / page, page, model.cache_layers());
  SequenceChunk chunk{tokens, 0, {}, true};
  for (int64_t p = 0; p < cache.num_pages(); ++p) chunk.pages.push_back(int32_t(p));
  const ForwardOutput out = model.forward({chunk}, cache);
  std::vector<float> host(size_t(out.logits.numel()));
  model.backend().copy_to_host(out.logits, host.data());
  return host;
}

TEST(Fp8Dispatch, FixtureModelWithinE4m3Bound) {
  const ModelConfig config = ModelConfig::load(test::kTinyModelFp8);
  const int64_t V = config.vocab_size;
  const double bound = std::sqrt(18.0) * std::ldexp(1.0, -4) / std::sqrt(3.0);
  for (size_t c : {size_t(2), size_t(3)}) {
    const std::vector<int32_t> prompt = test::load_reference_cases().at(c).input_ids;
    const int64_t T = int64_t(prompt.size());
    std::vector<float> logits[2];
    uint64_t bytes[2] = {0, 0};
    for (bool fp8 : {false, true})
      test::run_ranks(2, [&](dist::Communicator& comm) {
        auto b = make_cpu_backend({1});
        ExpertParallel ep(comm, ExpertPlacement::initial(moe_layers(config), int32_t(config.n_routed_experts), 2, 0));
        ep.set_fp8_dispatch(fp8);
        DeepseekV3 model(test::kTinyModelFp8, *b, {.ep = &ep});
        std::vector<float> l = prefill(model, prompt);
        if (comm.rank() == 0) logits[fp8] = std::move(l), bytes[fp8] = ep.bytes_sent();
      });
    const double err = test::rel_l2(logits[1].data(), logits[0].data(), int64_t(logits[0].size()));
    int64_t agree = 0;
    for (int64_t t = 0; t < T; ++t) {
      const float* a = logits[0].data() + t * V;
      const float* g = logits[1].data() + t * V;
      agree += std::max_element(a, a + V) - a == std::max_element(g, g + V) - g;
    }
    std::printf("%lld-token prompt: FP8 vs F32 dispatch rel L2 %.3e (bound %.3e), top-1 %lld/%lld; rank 0 sent %llu "
                "bytes (F32 dispatch: %llu)\n",
                (long long)T, err, bound, (long long)agree, (long long)T, (unsigned long long)bytes[1],
                (unsigned long long)bytes[0]);
    EXPECT_LE(err, bound);
    EXPECT_GE(double(agree), 0.95 * double(T));
    EXPECT_GT(err, 0.0) << "FP8 dispatch changed nothing: was it used?";
    // Dispatch rows cost D + 4 D / 128 bytes instead of 4 D; the combine's rows are unchanged (F32).
    EXPECT_LT(bytes[1], bytes[0]);
  }
}

TEST(Fp8Dispatch, NeedsFp8Experts) {
  const ModelConfig config = ModelConfig::load(test::kTinyModel);
  std::string what = "no error";
  test::run_ranks(1, [&](dist::Communicator& comm) {
    auto b = make_cpu_backend({1});
    ExpertParallel ep(comm, ExpertPlacement::initial(moe_layers(config), int32_t(config.n_routed_experts), 1, 0));
    ep.set_fp8_dispatch(true);
    DeepseekV3 model(test::kTinyModel, *b, {.ep = &ep});
    try {
      prefill(model, {3, 17, 42});
    } catch (const Error& e) {
      what = e.what();
    }
  });
  EXPECT_NE(what.find("FP8 dispatch is for FP8 experts"), std::string::npos) << what;
  EXPECT_NE(what.find("BF16"), std::string::npos) << what;
}

}  // namespace
}  // namespace moe
