// The DeepSeek-V3 family's members made by create-random --family and loaded by the CPU backend (issue 17):
//   Kimi-K2 (384 experts, one group, INT4 routed experts): the logits equal those of a twin checkpoint whose
//     experts this test unpacks itself (its own reading of the pack-quantized layout) into F32 `.weight`s, which
//     the long-tested F32 path runs. Both sides are F32 with different summation orders (per-group partial
//     sums times the scale vs products summed): ~1e-6 relative per op; bound 1e-4 relative L2, same argmax.
//   V3.1: every FP8 block scale a power of two, flagged on the weights; V3.2: the indexer weights are there.
//   Errors: a missing weight_scale, INT4 scales of another group size, packed words of the wrong dtype, a
//   disagreeing weight_shape, a ue8m0 scale that is not a power of two, a V3.2 layer without one of its indexer
//   tensors, each naming the tensor; and the config's unsupported quantisation fields (scale_fmt, num_bits,
//   group_size, format), each naming the field and value.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/deepseek_v3.h"
#include "model/family.h"
#include "model/random_checkpoint.h"
#include "test_util.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

template <typename Fn>
void expect_error(Fn fn, std::initializer_list<std::string> needles) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

json tiny_config(int64_t experts, int64_t groups, int64_t topk_group, int64_t top_k) {
  return json{{"architectures", {"DeepseekV3ForCausalLM"}}, {"model_type", "deepseek_v3"},
              {"vocab_size", 256}, {"hidden_size", 128}, {"intermediate_size", 160}, {"moe_intermediate_size", 64},
              {"num_hidden_layers", 2}, {"num_attention_heads", 2}, {"q_lora_rank", 48}, {"kv_lora_rank", 32},
              {"qk_nope_head_dim", 16}, {"qk_rope_head_dim", 8}, {"v_head_dim", 16},
              {"n_routed_experts", experts}, {"n_shared_experts", 1}, {"num_experts_per_tok", top_k},
              {"n_group", groups}, {"topk_group", topk_group}, {"first_k_dense_replace", 1},
              {"norm_topk_prob", true}, {"routed_scaling_factor", 2.827}, {"scoring_func", "sigmoid"},
              {"topk_method", "noaux_tc"}, {"rms_norm_eps", 1e-6}, {"rope_theta", 50000.0},
              {"max_position_embeddings", 4096}, {"index_n_heads", 2}, {"index_head_dim", 16}, {"index_topk", 4}};
}

// A fresh directory holding the checkpoint create-random makes of `cfg` as `family`.
std::string make_random(const std::string& name, const json& cfg, RandomFamily family, bool fp8 = false) {
  const std::string dir = test::temp_path(name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string cfg_path = dir + ".config.json";
  std::ofstream(cfg_path) << cfg.dump();
  RandomCheckpointOptions o;
  o.config_path = cfg_path;
  o.out_dir = dir;
  o.family = family;
  o.fp8 = fp8;
  o.seed = 11;
  create_random_checkpoint(o);
  fs::remove(cfg_path);
  return dir;
}

// Copies a checkpoint into `out` (one file), each tensor through `edit`, which may drop it (false) or add
// tensors (their bytes in `storage`); config.json through `edit_config`.
using Edit = std::function<bool(const Checkpoint&, const std::string&, const TensorView&, std::vector<NamedTensor>&,
                                std::vector<std::vector<uint8_t>>&)>;
void copy_checkpoint(const std::string& src, const std::string& out, const Edit& edit,
                     const std::function<void(json&)>& edit_config) {
  fs::remove_all(out);
  fs::create_directories(out);
  json cfg = json::parse(std::ifstream(fs::path(src) / "config.json"));
  edit_config(cfg);
  std::ofstream(fs::path(out) / "config.json") << cfg.dump();
  const Checkpoint ck(src);
  std::vector<NamedTensor> tensors;
  std::vector<std::vector<uint8_t>> storage;
  storage.reserve(8192);  // views into it must stay put
  for (const std::string& name : ck.names()) {
    const TensorView v = ck.get(name);
    if (edit(ck, name, v, tensors, storage)) tensors.push_back({name, v});
  }
  write_safetensors((fs::path(out) / "model.safetensors").string(), tensors);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<float> logits_of(const std::string& dir, const std::vector<int32_t>& tokens) {
  auto backend = make_cpu_backend();
  DeepseekV3 model(dir, *backend);
  const int64_t T = int64_t(tokens.size()), V = model.config().vocab_size;
  LatentCache cache(model.config(), *backend, 1, 64, model.cache_layers());
  ForwardOutput o = model.forward({SequenceChunk{tokens, 0, {0}, true}}, cache);
  std::vector<float> out(size_t(T * V));
  backend->copy_to_host(o.logits, out.data());
  return out;
}

TEST(Family, KimiInt4ExpertsEqualTheirDequantisedTwin) {
  const std::string dir = make_random("kimi", tiny_config(384, 1, 1, 8), RandomFamily::KimiK2);
  const ModelConfig c = ModelConfig::load(dir);
  EXPECT_EQ(model_family(c), ModelFamily::KimiK2);
  ASSERT_TRUE(c.packed_int.has_value());
  EXPECT_EQ(c.packed_int->group_size, 32);
  const Checkpoint ck(dir);
  ASSERT_TRUE(ck.has("model.layers.1.mlp.experts.383.down_proj.weight_packed"));
  EXPECT_EQ(ck.get("model.layers.1.mlp.experts.383.down_proj.weight_packed").shape, (Shape{128, 8}));
  EXPECT_EQ(ck.get("model.layers.1.mlp.experts.383.down_proj.weight_scale").shape, (Shape{128, 2}));
  EXPECT_TRUE(ck.has("model.layers.1.mlp.shared_experts.down_proj.weight"));  // not quantised (ignore list)

  // The twin: value k of row r = (((word[r][k / 8] >> 4 (k % 8)) & 15) - 8) * scale[r][k / 32], as F32.
  const std::string twin = dir + "-twin";
  copy_checkpoint(
      dir, twin,
      [](const Checkpoint& src, const std::string& name, const TensorView& v, std::vector<NamedTensor>& out,
         std::vector<std::vector<uint8_t>>& storage) {
        if (ends_with(name, ".weight_scale") || ends_with(name, ".weight_shape")) return false;
        if (!ends_with(name, ".weight_packed")) return true;
        const std::string base = name.substr(0, name.size() - std::string(".weight_packed").size());
        const TensorView scale = src.get(base + ".weight_scale");
        const int64_t R = v.shape[0], C = v.shape[1] * 8;
        storage.emplace_back(size_t(R * C * 4));
        float* f = reinterpret_cast<float*>(storage.back().data());
        for (int64_t r = 0; r < R; ++r)
          for (int64_t k = 0; k < C; ++k) {
            const uint32_t word = v.as<const uint32_t>()[r * (C / 8) + k / 8];
            const float q = float(int((word >> (4 * (k % 8))) & 15u) - 8);
            f[r * C + k] = q * bf16_to_float(scale.as<const uint16_t>()[r * (C / 32) + k / 32]);
          }
        out.push_back({base + ".weight", TensorView{f, DType::F32, Shape{R, C}, Device{}}});
        return false;
      },
      [](json& cfg) { cfg.erase("quantization_config"); });
  const std::vector<int32_t> tokens = {3, 17, 42, 101, 7, 250};
  const std::vector<float> a = logits_of(dir, tokens), b = logits_of(twin, tokens);
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * double(a[i] - b[i]), den += double(b[i]) * b[i];
  std::printf("[ kimi int4 vs dequantised twin ] rel L2 %.3g\n", std::sqrt(num / den));
  EXPECT_LE(std::sqrt(num / den), 1e-4);
  EXPECT_GT(den, 0.0);
  const int64_t V = 256;
  for (size_t t = 0; t < tokens.size(); ++t)
    EXPECT_EQ(std::max_element(a.begin() + t * V, a.begin() + (t + 1) * V) - a.begin(),
              std::max_element(b.begin() + t * V, b.begin() + (t + 1) * V) - b.begin()) << "t=" << t;
  fs::remove_all(twin);
  fs::remove_all(dir);
}

TEST(Family, V31Ue8m0ScalesArePowersOfTwo) {
  const std::string dir = make_random("v31", tiny_config(8, 4, 2, 3), RandomFamily::V31);
  const ModelConfig c = ModelConfig::load(dir);
  EXPECT_TRUE(c.ue8m0_scales);
  EXPECT_EQ(c.fp8_block_rows, 128);
  EXPECT_EQ(model_family(c), ModelFamily::V31);
  EXPECT_STREQ(family_name(model_family(c)), "DeepSeek-V3.1");
  const Checkpoint ck(dir);
  int64_t scales = 0;
  for (const std::string& name : ck.names()) {
    if (!ends_with(name, "_scale_inv")) continue;
    const TensorView v = ck.get(name);
    for (int64_t i = 0; i < v.numel(); ++i, ++scales) {
      int e = 0;
      ASSERT_EQ(std::frexp(double(v.as<const float>()[i]), &e), 0.5) << name << " element " << i;
    }
  }
  EXPECT_GT(scales, 0);
  auto backend = make_cpu_backend();
  DeepseekV3 model(dir, *backend);
  EXPECT_TRUE(model.weights().layers[1].experts.experts[0].gate.pow2_scales);
  EXPECT_TRUE(model.weights().layers[0].attn.o_proj.pow2_scales);

  // A scale that is not a power of two: the loader names the tensor.
  const std::string bad = dir + "-bad";
  copy_checkpoint(
      dir, bad,
      [](const Checkpoint&, const std::string& name, const TensorView& v, std::vector<NamedTensor>& out,
         std::vector<std::vector<uint8_t>>& storage) {
        if (name != "model.layers.0.self_attn.o_proj.weight_scale_inv") return true;
        storage.emplace_back(static_cast<const uint8_t*>(v.data), static_cast<const uint8_t*>(v.data) + v.nbytes());
        reinterpret_cast<float*>(storage.back().data())[0] *= 1.5f;
        TensorView copy = v;
        copy.data = storage.back().data();
        out.push_back({name, copy});
        return false;
      },
      [](json&) {});
  expect_error([&] { DeepseekV3 m(bad, *backend); },
               {"model.layers.0.self_attn.o_proj.weight_scale_inv", "power of two", "ue8m0"});
  fs::remove_all(bad);
  fs::remove_all(dir);
}

TEST(Family, V32HasItsIndexerWeights) {
  const std::string dir = make_random("v32", tiny_config(8, 4, 2, 3), RandomFamily::V32);
  const ModelConfig c = ModelConfig::load(dir);
  EXPECT_EQ(model_family(c), ModelFamily::V32);
  ASSERT_TRUE(c.sparse_attention());
  const Checkpoint ck(dir);
  for (const char* t : {"wq_b.weight", "wk.weight", "k_norm.weight", "k_norm.bias", "weights_proj.weight"})
    EXPECT_TRUE(ck.has(std::string("model.layers.1.self_attn.indexer.") + t)) << t;
  const std::vector<float> l = logits_of(dir, {5, 9, 14, 200, 3, 3, 8});  // 7 tokens > index_topk 4: sparse
  for (float v : l) ASSERT_TRUE(std::isfinite(v));
  fs::remove_all(dir);
}

// A V3.2 checkpoint without one of a layer's indexer tensors: the error names the tensor (each of the five).
TEST(Family, V32MissingIndexerTensorNamesIt) {
  const std::string dir = make_random("v32-err", tiny_config(8, 4, 2, 3), RandomFamily::V32);
  auto backend = make_cpu_backend();
  const std::string bad = dir + "-bad";
  for (const char* t : {"wq_b.weight", "wk.weight", "k_norm.weight", "k_norm.bias", "weights_proj.weight"}) {
    const std::string victim = std::string("model.layers.1.self_attn.indexer.") + t;
    copy_checkpoint(
        dir, bad,
        [&](const Checkpoint&, const std::string& name, const TensorView&, std::vector<NamedTensor>&,
            std::vector<std::vector<uint8_t>>&) { return name != victim; },
        [](json&) {});
    expect_error([&] { DeepseekV3 m(bad, *backend); }, {"missing the indexer tensor", victim});
  }
  fs::remove_all(bad);
  fs::remove_all(dir);
}

// INT4 tensors whose packing or grouping differs from what config.json says: group scales of group 64 under
// group_size 32 (half the columns), packed words stored as F32, a weight_shape that disagrees.
TEST(Family, Int4PackingErrorsNameTheTensor) {
  const std::string dir = make_random("kimi-pack", tiny_config(8, 1, 1, 2), RandomFamily::KimiK2);
  auto backend = make_cpu_backend();
  const std::string bad = dir + "-bad";
  const std::string base = "model.layers.1.mlp.experts.3.gate_proj";
  // Replaces `victim` with `make(original)` (bytes kept in storage, a view added to the tensors).
  auto replace = [&](const std::string& victim, std::function<std::pair<TensorView, std::vector<uint8_t>>(
                                                    const TensorView&)> make) {
    copy_checkpoint(
        dir, bad,
        [&](const Checkpoint&, const std::string& name, const TensorView& v, std::vector<NamedTensor>& out,
            std::vector<std::vector<uint8_t>>& storage) {
          if (name != victim) return true;
          auto [view, bytes] = make(v);
          storage.push_back(std::move(bytes));
          view.data = storage.back().data();
          out.push_back({name, view});
          return false;
        },
        [](json&) {});
  };
  replace(base + ".weight_scale", [](const TensorView& v) {
    TensorView o = v;
    o.shape = Shape{v.shape[0], v.shape[1] / 2};  // the scales of group 64
    return std::make_pair(o, std::vector<uint8_t>(o.nbytes(), 0x3f));
  });
  expect_error([&] { DeepseekV3 m(bad, *backend); }, {base + ".weight_scale"});
  replace(base + ".weight_packed", [](const TensorView& v) {
    TensorView o = v;
    o.dtype = DType::F32;  // same bytes, declared as floats
    return std::make_pair(o, std::vector<uint8_t>(static_cast<const uint8_t*>(v.data),
                                                  static_cast<const uint8_t*>(v.data) + v.nbytes()));
  });
  expect_error([&] { DeepseekV3 m(bad, *backend); }, {base + ".weight_packed", "I32"});
  replace(base + ".weight_shape", [](const TensorView& v) {
    TensorView o = v;
    std::vector<uint8_t> bytes(static_cast<const uint8_t*>(v.data), static_cast<const uint8_t*>(v.data) + v.nbytes());
    if (v.dtype == DType::I64) reinterpret_cast<int64_t*>(bytes.data())[1] *= 2;
    else reinterpret_cast<int32_t*>(bytes.data())[1] *= 2;
    return std::make_pair(o, bytes);
  });
  expect_error([&] { DeepseekV3 m(bad, *backend); }, {base + ".weight_shape"});
  fs::remove_all(bad);
  fs::remove_all(dir);
}

TEST(Family, Int4LoaderErrorsNameTheTensor) {
  const std::string dir = make_random("kimi-err", tiny_config(8, 1, 1, 2), RandomFamily::KimiK2);
  auto backend = make_cpu_backend();
  const std::string bad = dir + "-bad";
  const std::string victim = "model.layers.1.mlp.experts.5.up_proj.weight_scale";
  copy_checkpoint(
      dir, bad,
      [&](const Checkpoint&, const std::string& name, const TensorView&, std::vector<NamedTensor>&,
          std::vector<std::vector<uint8_t>>&) { return name != victim; },
      [](json&) {});
  expect_error([&] { DeepseekV3 m(bad, *backend); },
               {"model.layers.1.mlp.experts.5.up_proj.weight_packed", "has no", victim});
  // INT4 tensors with a config that does not say so.
  copy_checkpoint(
      dir, bad, [](const Checkpoint&, const std::string&, const TensorView&, std::vector<NamedTensor>&,
                   std::vector<std::vector<uint8_t>>&) { return true; },
      [](json& cfg) { cfg.erase("quantization_config"); });
  expect_error([&] { DeepseekV3 m(bad, *backend); }, {".weight_packed", "no compressed-tensors quantization_config"});
  fs::remove_all(bad);
  fs::remove_all(dir);
}

TEST(Family, QuantizationConfigErrorsNameTheField) {
  auto with = [](json q) {
    json cfg = tiny_config(8, 1, 1, 2);
    cfg["quantization_config"] = q;
    return cfg;
  };
  const json fp8 = {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"weight_block_size", {128, 128}}};
  json bad_fmt = fp8;
  bad_fmt["scale_fmt"] = "e5m2";
  expect_error([&] { ModelConfig::from_json(with(bad_fmt), "cfg"); }, {"cfg", "scale_fmt", "e5m2"});
  json null_fmt = fp8;
  null_fmt["scale_fmt"] = nullptr;
  EXPECT_FALSE(ModelConfig::from_json(with(null_fmt), "cfg").ue8m0_scales);
  json ue = fp8;
  ue["scale_fmt"] = "ue8m0";
  EXPECT_TRUE(ModelConfig::from_json(with(ue), "cfg").ue8m0_scales);

  const json ct = json::parse(R"({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"group_0": {"input_activations": null, "targets": ["Linear"],
        "weights": {"num_bits": 4, "group_size": 32, "strategy": "group", "symmetric": true, "type": "int",
                    "dynamic": false}}}, "ignore": ["lm_head"]})");
  const ModelConfig ok = ModelConfig::from_json(with(ct), "cfg");
  ASSERT_TRUE(ok.packed_int.has_value());
  EXPECT_EQ(ok.packed_int->group_size, 32);
  auto weights_with = [&](const char* key, json v) {
    json q = ct;
    q["config_groups"]["group_0"]["weights"][key] = v;
    return with(q);
  };
  expect_error([&] { ModelConfig::from_json(weights_with("num_bits", 8), "cfg"); }, {"num_bits", "8", "supported: 4"});
  expect_error([&] { ModelConfig::from_json(weights_with("group_size", 48), "cfg"); }, {"group_size", "48"});
  expect_error([&] { ModelConfig::from_json(weights_with("symmetric", false), "cfg"); }, {"symmetric"});
  expect_error([&] { ModelConfig::from_json(weights_with("strategy", "channel"), "cfg"); }, {"strategy", "channel"});
  // group 128 does not divide moe_intermediate_size 64
  expect_error([&] { ModelConfig::from_json(weights_with("group_size", 128), "cfg"); },
               {"group_size 128", "moe_intermediate_size"});
  json fmt = ct;
  fmt["format"] = "int-quantized";
  expect_error([&] { ModelConfig::from_json(with(fmt), "cfg"); }, {"quantization_config.format", "int-quantized"});
  json method = ct;
  method["quant_method"] = "awq";
  expect_error([&] { ModelConfig::from_json(with(method), "cfg"); }, {"quant_method", "awq"});
}

TEST(Family, NamesEachMember) {
  json v3 = tiny_config(8, 4, 2, 3);
  EXPECT_EQ(model_family(ModelConfig::from_json(v3, "c")), ModelFamily::V3);
  json kimi = tiny_config(384, 1, 1, 8);
  EXPECT_EQ(model_family(ModelConfig::from_json(kimi, "c")), ModelFamily::KimiK2);
  json kimi_type = v3;
  kimi_type["model_type"] = "kimi_k2";
  EXPECT_EQ(model_family(ModelConfig::from_json(kimi_type, "c")), ModelFamily::KimiK2);
  json moonlight = v3;
  moonlight["vocab_size"] = 163840;
  moonlight["q_lora_rank"] = nullptr;
  EXPECT_EQ(model_family(ModelConfig::from_json(moonlight, "c")), ModelFamily::Moonlight);
  json v32 = v3;
  v32["architectures"] = {"DeepseekV32ForCausalLM"};
  EXPECT_EQ(model_family(ModelConfig::from_json(v32, "c")), ModelFamily::V32);
  json v2 = v3;
  v2["architectures"] = {"DeepseekV2ForCausalLM"};
  v2["scoring_func"] = "softmax";
  v2["topk_method"] = "greedy";
  EXPECT_EQ(model_family(ModelConfig::from_json(v2, "c")), ModelFamily::V2);
}

}  // namespace
}  // namespace moe
