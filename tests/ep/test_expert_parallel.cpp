// Expert-parallel MoE on ranks that are threads of this process (thread_communicator.h), against the same model
// in one process: without redundant copies every expert sees the same rows in the same order as in one process
// and moe_combine runs in the single-process order, so the logits must be bit-identical; with copies a copy takes
// part of its expert's rows, which can move a matmul between its few-token and many-token code paths (F32
// accumulation in another order: ~1e-7 relative per matmul), so we allow 1e-5 relative (the bound).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "backend/backend.h"
#include "ep/ep_test_util.h"
#include "ep/thread_communicator.h"
#include "engine/generator.h"
#include "model/deepseek_v3.h"
#include "test_util.h"

namespace moe {
namespace {

using test::max_rel_diff;
using test::moe_layers;

constexpr double kRelBound = 1e-5;

// All logits of one prefill of `tokens`, then `decode` greedy tokens: the logits rows concatenated, and the tokens.
struct StepsRun {
  std::vector<float> logits;
  std::vector<int32_t> greedy;
};

StepsRun run_model(DeepseekV3& model, const std::vector<int32_t>& tokens, int decode,
              const std::function<void(int step)>& between_steps = {}) {
  StepsRun r;
  const int64_t page = 16, T = int64_t(tokens.size()) + decode;
  LatentCache cache(model.config(), model.backend(), (T + page - 1) / page, page, model.cache_layers());
  std::vector<int32_t> pages;
  for (int64_t p = 0; p < cache.num_pages(); ++p) pages.push_back(int32_t(p));
  SequenceChunk chunk{tokens, 0, pages, true};
  for (int step = 0; step <= decode; ++step) {
    if (between_steps) between_steps(step);
    const ForwardOutput out = model.forward({chunk}, cache);
    const int64_t n = out.logits.numel(), V = model.config().vocab_size;
    std::vector<float> host(static_cast<size_t>(n));
    model.backend().copy_to_host(out.logits, host.data());
    r.logits.insert(r.logits.end(), host.begin(), host.end());
    const float* last = host.data() + n - V;
    const int32_t next = int32_t(std::max_element(last, last + V) - last);
    r.greedy.push_back(next);
    chunk = SequenceChunk{{next}, chunk.start_pos + int32_t(chunk.tokens.size()), pages, true};
  }
  return r;
}

struct Case {
  std::string model;
  int ranks, redundant;
  bool tbo = false;  // two-micro-batch overlap (each rank's block in two halves)
};

class ExpertParallelTest : public ::testing::TestWithParam<Case> {};

TEST_P(ExpertParallelTest, MatchesOneProcess) {
  const Case c = GetParam();
  const std::vector<int32_t> prompt = test::load_reference_cases().at(2).input_ids;  // 33 tokens
  constexpr int kDecode = 6;
  auto backend = make_cpu_backend({1});
  DeepseekV3 single(c.model, *backend, {.load_mtp = true});
  const StepsRun want = run_model(single, prompt, kDecode);

  std::vector<StepsRun> got(size_t(c.ranks));
  std::vector<uint64_t> sent(size_t(c.ranks));
  test::run_ranks(c.ranks, [&](dist::Communicator& comm) {
    auto b = make_cpu_backend({1});
    const ModelConfig config = ModelConfig::load(c.model);
    ExpertParallel ep(comm, ExpertPlacement::initial(moe_layers(config), int32_t(config.n_routed_experts), comm.size(),
                                                     c.redundant));
    ep.set_two_micro_batch(c.tbo);
    DeepseekV3 model(c.model, *b, {.load_mtp = true, .ep = &ep});
    for (const auto& l : model.weights().layers)
      if (l.is_moe) { EXPECT_EQ(int64_t(l.experts.experts.size()), ep.placement().slots_per_rank); }
    got[size_t(comm.rank())] = run_model(model, prompt, kDecode);
    sent[size_t(comm.rank())] = ep.bytes_sent();
  });
  for (int r = 0; r < c.ranks; ++r) {
    const StepsRun& g = got[size_t(r)];
    ASSERT_EQ(g.logits.size(), want.logits.size());
    EXPECT_EQ(g.greedy, want.greedy) << "rank " << r;
    const double rel = max_rel_diff(g.logits, want.logits);
    if (c.redundant == 0 && !c.tbo)
      EXPECT_EQ(rel, 0.0) << "rank " << r << ": without copies the logits are bit-identical";
    else
      EXPECT_LE(rel, kRelBound) << "rank " << r;
    char text[32];
    std::snprintf(text, sizeof text, "%.3g", rel);
    RecordProperty("rank" + std::to_string(r) + ".max_rel_diff", text);
    EXPECT_GT(sent[size_t(r)], 0u) << "rank " << r << " sent no rows";
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, ExpertParallelTest,
                         ::testing::Values(Case{test::kTinyModel, 1, 0}, Case{test::kTinyModel, 2, 0},
                                           Case{test::kTinyModel, 4, 0}, Case{test::kTinyModel, 2, 2},
                                           Case{test::kTinyModel, 4, 4}, Case{test::kTinyModelFp8, 2, 0},
                                           Case{test::kTinyModelFp8, 4, 4}, Case{test::kTinyModel, 2, 0, true}),
                         [](const auto& info) {
                           return std::string(info.param.model == test::kTinyModel ? "bf16" : "fp8") + "_np" +
                                  std::to_string(info.param.ranks) + "_redundant" +
                                  std::to_string(info.param.redundant) + (info.param.tbo ? "_tbo" : "");
                         });

// EPLB applied between steps (each rank loads its new slots' experts) changes nothing in the outputs, and the
// load counter on a rank sees every token (the batch is the same on every rank).
TEST(ExpertParallel, RebalanceBetweenStepsKeepsOutputs) {
  const std::vector<int32_t> prompt = test::load_reference_cases().at(1).input_ids;
  constexpr int kDecode = 5, kRanks = 4, kRedundant = 4;
  auto backend = make_cpu_backend({1});
  const ModelConfig config = ModelConfig::load(test::kTinyModel);
  ExpertLoadCounter single_load(moe_layers(config), int32_t(config.n_routed_experts));
  DeepseekV3 single(test::kTinyModel, *backend, {.load = &single_load});
  const StepsRun want = run_model(single, prompt, kDecode);

  std::vector<StepsRun> got(static_cast<size_t>(kRanks));
  std::vector<double> before(static_cast<size_t>(kRanks)), after(static_cast<size_t>(kRanks));
  std::vector<std::vector<uint64_t>> counted;
  test::run_ranks(kRanks, [&](dist::Communicator& comm) {
    auto b = make_cpu_backend({1});
    ExpertParallel ep(comm, ExpertPlacement::initial(moe_layers(config), int32_t(config.n_routed_experts), kRanks,
                                                     kRedundant));
    ExpertLoadCounter load(moe_layers(config), int32_t(config.n_routed_experts));
    DeepseekV3 model(test::kTinyModel, *b, {.ep = &ep, .load = &load});
    got[size_t(comm.rank())] = run_model(model, prompt, kDecode, [&](int step) {
      if (step != 2) return;
      // Every rank computes the same placement from the same counts (the batch is replicated).
      const auto window = load.take_window();
      ExpertPlacement p = ep.placement();
      const size_t layer = 1;
      before[size_t(comm.rank())] = imbalance(rank_loads(p.layers[layer], window[layer], p.slots_per_rank));
      for (size_t l = 0; l < p.layers.size(); ++l)
        if (!p.layers[l].empty()) p.layers[l] = eplb_layer(window[l], kRanks, p.slots_per_rank);
      after[size_t(comm.rank())] = imbalance(rank_loads(p.layers[layer], window[layer], p.slots_per_rank));
      model.set_placement(p);
    });
    if (comm.rank() == 0) counted = load.totals();
  });
  for (int r = 0; r < kRanks; ++r) {
    EXPECT_EQ(got[size_t(r)].greedy, want.greedy) << "rank " << r;
    EXPECT_LE(max_rel_diff(got[size_t(r)].logits, want.logits), kRelBound) << "rank " << r;
  }
  EXPECT_LE(after[0], before[0]);
  RecordProperty("layer1_imbalance_before", std::to_string(before[0]));
  RecordProperty("layer1_imbalance_after", std::to_string(after[0]));
  EXPECT_EQ(counted, single_load.totals());
  const int64_t tokens = int64_t(prompt.size()) + kDecode;
  for (size_t l = 0; l < counted.size(); ++l) {
    uint64_t sum = 0;
    for (uint64_t n : counted[l]) sum += n;
    const bool run = int64_t(l) < config.num_hidden_layers && config.is_moe_layer(int64_t(l));  // no MTP steps here
    EXPECT_EQ(sum, run ? uint64_t(tokens * config.num_experts_per_tok) : 0u) << "layer " << l;
  }
}

}  // namespace
}  // namespace moe

#include "engine/ep_serving.h"

namespace moe {
namespace {

// The step message rank 0 broadcasts in expert-parallel serving: a round trip with and without a placement, and
// clear errors for malformed ones.
TEST(StepMessage, RoundTripAndErrors) {
  StepMessage m;
  m.chunks.push_back(SequenceChunk{{5, 6, 7}, 3, {0, 4}, true});
  m.chunks.push_back(SequenceChunk{{9}, 12, {1}, false});
  m.placement = ExpertPlacement::initial({false, true, true}, 16, 4, 4);
  const StepMessage back = decode_step(encode_step(m));
  ASSERT_EQ(back.chunks.size(), 2u);
  EXPECT_EQ(back.chunks[0].tokens, m.chunks[0].tokens);
  EXPECT_EQ(back.chunks[0].pages, m.chunks[0].pages);
  EXPECT_EQ(back.chunks[0].start_pos, 3);
  EXPECT_TRUE(back.chunks[0].all_logits);
  EXPECT_FALSE(back.chunks[1].all_logits);
  ASSERT_TRUE(back.placement.has_value());
  EXPECT_EQ(back.placement->to_json(), m.placement->to_json());
  m.placement.reset();
  EXPECT_FALSE(decode_step(encode_step(m)).placement.has_value());
  EXPECT_TRUE(decode_step(encode_step(StepMessage{.stop = true})).stop);
  const StepMessage sum = decode_step(encode_step(StepMessage{.sum_loads = true}));
  EXPECT_TRUE(sum.sum_loads);
  EXPECT_FALSE(sum.stop);
  EXPECT_TRUE(sum.chunks.empty());

  auto err = [](const std::string& bytes) {
    try {
      decode_step(bytes);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string good = encode_step(m);
  EXPECT_NE(err("XXXX").find("bad magic"), std::string::npos);
  EXPECT_NE(err(encode_step(StepMessage{.sum_loads = true}) + "x").find("bytes after a sum-loads"), std::string::npos);
  EXPECT_NE(err(good.substr(0, good.size() - 2)).find("truncated"), std::string::npos);
  EXPECT_NE(err(good + "x").find("bytes after"), std::string::npos);
  std::string big = good;
  big[12] = '\x7f';  // the chunk count's low byte
  EXPECT_NE(err(big).find("past the end"), std::string::npos) << err(big);
}

}  // namespace
}  // namespace moe
