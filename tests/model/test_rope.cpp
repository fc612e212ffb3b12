// YaRN as DeepSeek-V3 configures it (qk_rope 64, theta 1e4, factor 40 over 4096 positions, beta 32/1,
// mscale = mscale_all_dim = 1), with values worked out by hand from MODEL.md:
//   corr(32) = 64 ln(4096 / (2 pi 32)) / (2 ln 1e4) = 10.47 -> lo = 10;  corr(1) = 22.5 -> hi = 23.
//   Frequencies below lo keep their plain value, those from hi on are divided by 40.
//   softmax scale = 192^-0.5 * (0.1 ln 40 + 1)^2 = 0.0721688 * 1.368888^2.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "model/rope.h"

namespace moe {
namespace {

ModelConfig v3_like() {
  nlohmann::json j = {{"architectures", {"DeepseekV3ForCausalLM"}}, {"vocab_size", 1000}, {"hidden_size", 64},
                      {"intermediate_size", 128}, {"num_hidden_layers", 1}, {"num_attention_heads", 2},
                      {"kv_lora_rank", 32}, {"qk_nope_head_dim", 128}, {"qk_rope_head_dim", 64}, {"v_head_dim", 128},
                      {"rope_theta", 10000.0},
                      {"rope_scaling", {{"type", "yarn"}, {"factor", 40}, {"original_max_position_embeddings", 4096},
                                        {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}}}};
  return ModelConfig::from_json(j, "test");
}

TEST(Yarn, FrequenciesFollowTheRamp) {
  const RopeParams p = make_rope_params(v3_like());
  ASSERT_EQ(p.inv_freq.size(), 32u);
  auto plain = [](int i) { return std::pow(10000.0, -2.0 * i / 64.0); };
  EXPECT_DOUBLE_EQ(p.inv_freq[0], 1.0);
  EXPECT_NEAR(p.inv_freq[10], plain(10), 1e-15);  // ramp 0 at lo
  EXPECT_NEAR(p.inv_freq[23], plain(23) / 40.0, 1e-15);  // ramp 1 at hi
  EXPECT_NEAR(p.inv_freq[31], plain(31) / 40.0, 1e-15);
  const double ramp = (16.0 - 10.0) / (23.0 - 10.0);
  EXPECT_NEAR(p.inv_freq[16], plain(16) / 40.0 * ramp + plain(16) * (1 - ramp), 1e-15);
  EXPECT_DOUBLE_EQ(p.attn_factor, 1.0);  // mscale == mscale_all_dim
}

TEST(Yarn, SoftmaxScaleIncludesMscaleSquared) {
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(attention_scale(v3_like()), 1.0 / std::sqrt(192.0) * m * m, 1e-7);
  EXPECT_NEAR(m, 1.368888, 1e-6);
}

TEST(Yarn, PlainRopeWithoutScaling) {
  ModelConfig c = v3_like();
  c.yarn.reset();
  const RopeParams p = make_rope_params(c);
  for (int i = 0; i < 32; ++i) EXPECT_NEAR(p.inv_freq[i], std::pow(10000.0, -2.0 * i / 64.0), 1e-15);
  EXPECT_NEAR(attention_scale(c), 1.0 / std::sqrt(192.0), 1e-8);
}

}  // namespace
}  // namespace moe
