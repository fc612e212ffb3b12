// A checkpoint written by the trainer (write_hub_checkpoint, what `moe train` saves) loads with DeepseekV3 and
// its logits equal the trainer's own forward logits.
//
// Tolerance: both sides compute in float32 from the same float32 weights (for a BF16 checkpoint the trainer's
// weights are first rounded to BF16 exactly as the writer rounds them, so the comparison checks the save/load
// path, not BF16's 2^-9 rounding). The two forwards order their sums differently (the trainer sums in double,
// the engine in float over K <= 128 here), so each of ~20 ops in sequence differs by ~sqrt(K) 2^-24 relative;
// logits of size ~1 then differ by ~1e-5 at most. We allow 1e-4 absolute.
#include <gtest/gtest.h>

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
  if (dtype == "bf16")
    for (auto& p : m.params)
      for (float& w : p->w) w = bf16_to_float(float_to_bf16(w));

  const std::vector<int32_t> tokens(ids.begin(), ids.begin() + 12);
  const std::vector<float> want = forward_logits(m, tokens, 1, 12);
  const std::vector<float> got = engine_logits(dir, tokens);
  ASSERT_EQ(got.size(), want.size());
  const double err = test::max_abs_diff(got.data(), want.data(), int64_t(want.size()));
  EXPECT_LE(err, kMaxLogitError) << dtype;
  ::testing::Test::RecordProperty(dtype + ".max_abs_error", std::to_string(err));
  std::printf("%s checkpoint: max |logit difference| %.3g\n", dtype.c_str(), err);
}

TEST(TrainCheckpoint, F32LoadsWithDeepseekV3AndMatchesTheTrainerLogits) { check("f32"); }
TEST(TrainCheckpoint, Bf16LoadsWithDeepseekV3AndMatchesTheTrainerLogits) { check("bf16"); }

}  // namespace
}  // namespace moe::train
