// A checkpoint written by the trainer (write_hub_checkpoint, what `moe train` saves) loads with DeepseekV3 and
// its logits equal the trainer's own forward logits.
//
// Tolerance (max |logit| here is 1.56): both sides compute in float32 from the same float32 weights (for a BF16 checkpoint the trainer's
// weights are first rounded to BF16 exactly as the writer rounds them, so the comparison checks the save/load
// path, not BF16's 2^-9 rounding). The two forwards order their sums differently (the trainer sums in double,
// the engine in float over K <= 128 here), so each of ~20 ops in sequence differs by ~sqrt(K) 2^-24 relative;
// logits of size ~1 then differ by ~1e-5 at most. We allow 1e-4 absolute (measured 1.8e-7).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "backend/backend.h"
#include "core/dtype.h"
#include "model/deepseek_v3.h"
#include "test_util.h"
#include "train/model.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace moe::train {
namespace {

constexpr double kMaxLogitError = 1e-4;
const std::string kTinyTrain = "tests/data/tiny-train/model";

std::vector<float> engine_logits(const std::string& dir, const std::vector<int32_t>& tokens) {
  auto backend = make_cpu_backend();
  DeepseekV3 model(dir, *backend);
  const int64_t T = int64_t(tokens.size()), page = 16;
  LatentCache cache(model.config(), *backend, (T + page - 1) / page, page, model.cache_layers());
  SequenceChunk chunk{tokens, 0, {}, true};
  for (int64_t p = 0; p < cache.num_pages(); ++p) chunk.pages.push_back(int32_t(p));
  ForwardOutput out = model.forward({chunk}, cache);
  std::vector<float> host(size_t(out.logits.view().numel()));
  backend->copy_to_host(out.logits.view(), host.data());
  return host;
}

void check(const std::string& dtype) {
  // A fresh model, moved off its initialisation by two steps so no tensor is at a special value.
  const ModelConfig config = ModelConfig::load(kTinyTrain);
  TrainModel m = TrainModel::init(config, kTinyTrain + "/config.json", 5, 0.02);
  std::vector<int32_t> ids;
  for (int i = 0; i < 2 * 12; ++i) ids.push_back((i * 37 + 11) % int(config.vocab_size));
  for (int64_t step = 1; step <= 2; ++step) {
    m.zero_grad();
    ExpertLoads loads;
    forward_backward(m, ids, 2, 12, Objective{}, &loads);
    adamw_step(m, AdamW{}, 1e-2, 1.0, step);
    update_correction_biases(m, loads, 1e-2);
  }
  const std::string dir = test::temp_path("ckpt-" + dtype);
  std::filesystem::remove_all(dir);
  std::ifstream cfg(kTinyTrain + "/config.json");
  const std::string config_json(std::istreambuf_iterator<char>(cfg), {});
  write_hub_checkpoint(m, config_json, "", dir, dtype);
  const std::vector<int32_t> tokens(ids.begin(), ids.begin() + 12);
  if (dtype == "bf16") {
    // Against the trainer's F32 weights the BF16 checkpoint differs by its rounding: each weight by up to 2^-9
    // relative, which moves logits of size ~1.5 by ~1e-3 (measured 3.8e-3); we allow 2e-2.
    const std::vector<float> f32 = forward_logits(m, tokens, 1, 12), got = engine_logits(dir, tokens);
    const double err = test::max_abs_diff(got.data(), f32.data(), int64_t(f32.size()));
    std::printf("bf16 checkpoint vs the F32 trainer: max |logit difference| %.3g\n", err);
    EXPECT_LE(err, 2e-2);
    for (auto& p : m.params)
      for (float& w : p->w) w = bf16_to_float(float_to_bf16(w));
  }

  const std::vector<float> want = forward_logits(m, tokens, 1, 12);
  const std::vector<float> got = engine_logits(dir, tokens);
  ASSERT_EQ(got.size(), want.size());
  const double err = test::max_abs_diff(got.data(), want.data(), int64_t(want.size()));
  EXPECT_LE(err, kMaxLogitError) << dtype;
  ::testing::Test::RecordProperty(dtype + ".max_abs_error", std::to_string(err));
  double scale = 0;
  for (float v : want) scale = std::max(scale, double(std::fabs(v)));
  std::printf("%s checkpoint: max |logit difference| %.3g, max |logit| %.3g\n", dtype.c_str(), err, scale);
  EXPECT_GT(scale, 0.1);  // the comparison is not of near-zero logits
}

// --config's fresh initialisation: matrices Normal(0, std) (std 0.006 as DeepSeek-V3), norms 1, biases 0,
// a function of the seed.
TEST(TrainInit, NormalMatricesUnitNormsZeroBiases) {
  const ModelConfig config = ModelConfig::load(kTinyTrain);
  const TrainModel a = TrainModel::init(config, "cfg", 11, 0.006), b = TrainModel::init(config, "cfg", 11, 0.006),
                   c = TrainModel::init(config, "cfg", 12, 0.006);
  double sum = 0, sq = 0, n = 0;
  for (size_t i = 0; i < a.params.size(); ++i) {
    const Param& p = *a.params[i];
    EXPECT_EQ(p.w, b.params[i]->w) << p.name;
    if (p.shape.rank == 1) {
      for (float w : p.w) EXPECT_EQ(w, 1.f) << p.name;
      continue;
    }
    EXPECT_NE(p.w, c.params[i]->w) << p.name;
    for (float w : p.w) sum += w, sq += double(w) * w, ++n;
  }
  EXPECT_NEAR(sum / n, 0.0, 1e-4);
  EXPECT_NEAR(std::sqrt(sq / n), 0.006, 0.006 * 0.01);
  ASSERT_EQ(a.biases.size(), 2u);  // layer 1 and the MTP layer
  for (const auto& bias : a.biases)
    for (float v : bias->value) EXPECT_EQ(v, 0.f);
  // The checkpoint's tensor set: every tensor TrainModel::load reads.
  EXPECT_NE(a.find("model.layers.2.eh_proj.weight"), nullptr);
}

// parameter_count (what a device checks before the host copies are made) is the number of values init makes,
// for the tiny-train fixture (q_lora, MoE, MTP) and for the bench configs (no q_lora; dense first layer).
TEST(TrainInit, ParameterCountIsWhatInitMakes) {
  for (const std::string& path : {kTinyTrain + "/config.json", std::string("bench/configs/train-small.json"),
                                 std::string("bench/configs/train-default.json")}) {
    std::ifstream in(path);
    const ModelConfig config = ModelConfig::from_json(nlohmann::json::parse(in), path);
    const TrainModel m = TrainModel::init(config, path, 1, 0.02);
    int64_t n = 0;
    for (const auto& p : m.params) n += int64_t(p->w.size());
    EXPECT_EQ(parameter_count(config), n) << path;
  }
}

TEST(TrainCheckpoint, F32LoadsWithDeepseekV3AndMatchesTheTrainerLogits) { check("f32"); }
TEST(TrainCheckpoint, Bf16LoadsWithDeepseekV3AndMatchesTheTrainerLogits) { check("bf16"); }

}  // namespace
}  // namespace moe::train
