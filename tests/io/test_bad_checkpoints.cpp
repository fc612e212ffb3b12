// Bad input to the checkpoint loaders: every case must end in moe::Error whose message names what was wrong
// (the file, the tensor, the field), never a crash or garbage.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/model_config.h"
#include "io/safetensors.h"
#include "model/deepseek_v3.h"
#include "test_util.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Expects `fn` to throw moe::Error with every one of `needles` in its message.
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

// A scratch copy of the tiny BF16 model that a test may damage.
class BadCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_path(::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (const auto& f : fs::directory_iterator(source()))
      if (f.path().extension() != ".json" || f.path().filename() != "tokenizer.json")
        fs::copy_file(f.path(), fs::path(dir_) / f.path().filename());
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add);
  }
  void TearDown() override { fs::remove_all(dir_); }
  virtual std::string source() const { return test::kTinyModel; }

  json config() {
    std::ifstream in(fs::path(dir_) / "config.json");
    return json::parse(in);
  }
  void write_config(const json& j) {
    fs::permissions(fs::path(dir_) / "config.json", fs::perms::owner_write, fs::perm_options::add);
    std::ofstream(fs::path(dir_) / "config.json") << j.dump();
  }
  void load() {
    auto backend = make_cpu_backend();
    DeepseekV3 model(dir_, *backend, {.load_mtp = true});
  }
  std::string shard(int i) const { return (fs::path(dir_) / ("model-0000" + std::to_string(i) + "-of-00002.safetensors")).string(); }

  std::string dir_;
};

// Writes a safetensors file with a hand-made header and `data_bytes` bytes of data.
void write_raw(const std::string& path, const std::string& header, size_t data_bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const uint64_t len = header.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out << header;
  out << std::string(data_bytes, '\x01');
}

TEST_F(BadCheckpoint, MissingDirectory) { expect_error([] { Checkpoint("/nonexistent/model"); }, {"/nonexistent/model", "does not exist"}); }

TEST_F(BadCheckpoint, MissingConfig) {
  fs::remove(fs::path(dir_) / "config.json");
  expect_error([&] { load(); }, {"config.json"});
}

TEST_F(BadCheckpoint, ConfigNotJson) {
  fs::permissions(fs::path(dir_) / "config.json", fs::perms::owner_write, fs::perm_options::add);
  std::ofstream(fs::path(dir_) / "config.json") << "{\"hidden_size\": 256,";
  expect_error([&] { load(); }, {"config.json", "not valid JSON"});
}

TEST_F(BadCheckpoint, UnknownArchitecture) {
  json c = config();
  c["architectures"] = {"LlamaForCausalLM"};
  write_config(c);
  expect_error([&] { load(); }, {"unknown architecture", "LlamaForCausalLM"});
}

TEST_F(BadCheckpoint, UnknownScoringAndTopkMethod) {
  json c = config();
  c["scoring_func"] = "sqrtsoftplus";
  write_config(c);
  expect_error([&] { load(); }, {"scoring_func", "sqrtsoftplus"});
  c["scoring_func"] = "sigmoid";
  c["topk_method"] = "magic";
  write_config(c);
  expect_error([&] { load(); }, {"topk_method", "magic"});
}

TEST_F(BadCheckpoint, WrongFieldType) {
  const json orig = config();
  json c = orig;
  c["hidden_size"] = "256";
  write_config(c);
  expect_error([&] { load(); }, {"hidden_size", "integer"});
  // A flag given as a number or a string (the fuzzer's find: nlohmann's own type_error escaped as a crash).
  for (const char* flag : {"norm_topk_prob", "tie_word_embeddings"})
    for (const json& bad : {json(3840), json("true")}) {
      json j = orig;
      j[flag] = bad;
      write_config(j);
      expect_error([&] { load(); }, {"config.json", std::string("'") + flag + "' must be true or false"});
    }
}

// Finding 8 of issue 16: values the maths divides by or takes a log of loaded silently and gave NaN logits.
TEST_F(BadCheckpoint, ConfigValuesTheMathsCannotUse) {
  const std::vector<std::pair<std::string, json>> cases = {
      {"rope_theta", 0}, {"rope_theta", 1}, {"rope_theta", -10000.0},
      {"rms_norm_eps", -1e-6}, {"rms_norm_eps", 0}, {"routed_scaling_factor", 0},
      {"max_position_embeddings", 0},
      {"rope_scaling.factor", 0}, {"rope_scaling.factor", -4}, {"rope_scaling.beta_fast", 0},
      {"rope_scaling.beta_slow", -1}, {"rope_scaling.original_max_position_embeddings", 0},
      {"rope_scaling.mscale", -1}, {"rope_scaling.mscale_all_dim", -10.0},
  };
  for (const auto& [field, value] : cases) {
    SCOPED_TRACE(field + " = " + value.dump());
    json j = config();
    if (field.rfind("rope_scaling.", 0) == 0) j["rope_scaling"][field.substr(13)] = value;
    else j[field] = value;
    expect_error([&] { ModelConfig::from_json(j, "config.json"); }, {"config.json", "'" + field + "'"});
  }
  // The bundled model's values load.
  EXPECT_NO_THROW(ModelConfig::from_json(config(), "config.json"));
  // At load, before any weight is read.
  json j = config();
  j["rope_theta"] = 0;
  write_config(j);
  expect_error([&] { load(); }, {"config.json", "'rope_theta' must be a number > 1, got 0"});
}

TEST_F(BadCheckpoint, ShapeDisagreesWithConfig) {
  json c = config();
  c["intermediate_size"] = 384;  // the dense MLP of layer 0 is 512 wide in the files
  write_config(c);
  expect_error([&] { load(); }, {"model.layers.0.mlp.gate_proj.weight", "shape [512, 256]", "[384, 256]", "model-00001-of-00002.safetensors"});
}

TEST_F(BadCheckpoint, MissingTensor) {
  // Drop one expert from the index and from the shard header: a shorter header pointing at the same data.
  json index;
  {
    std::ifstream in(fs::path(dir_) / "model.safetensors.index.json");
    index = json::parse(in);
  }
  index["weight_map"].erase("model.layers.1.mlp.experts.3.up_proj.weight");
  fs::permissions(fs::path(dir_) / "model.safetensors.index.json", fs::perms::owner_write, fs::perm_options::add);
  std::ofstream(fs::path(dir_) / "model.safetensors.index.json") << index.dump();
  // Remove it from the shard too (a shard written without it).
  SafetensorsFile f(shard(1));
  std::vector<NamedTensor> kept;
  for (const auto& e : f.entries())
    if (e.name != "model.layers.1.mlp.experts.3.up_proj.weight") kept.push_back({e.name, f.view(e)});
  const std::string tmp = shard(1) + ".new";
  write_safetensors(tmp, kept);
  fs::rename(tmp, shard(1));
  expect_error([&] { load(); }, {"missing tensor", "model.layers.1.mlp.experts.3.up_proj.weight"});
}

TEST_F(BadCheckpoint, IndexNamesTensorAbsentFromShard) {
  json index;
  {
    std::ifstream in(fs::path(dir_) / "model.safetensors.index.json");
    index = json::parse(in);
  }
  index["weight_map"]["model.layers.9.mlp.gate.weight"] = "model-00001-of-00002.safetensors";
  fs::permissions(fs::path(dir_) / "model.safetensors.index.json", fs::perms::owner_write, fs::perm_options::add);
  std::ofstream(fs::path(dir_) / "model.safetensors.index.json") << index.dump();
  expect_error([&] { Checkpoint c(dir_); }, {"model.layers.9.mlp.gate.weight", "missing from"});
}

TEST_F(BadCheckpoint, TruncatedShard) {
  fs::permissions(shard(2), fs::perms::owner_write, fs::perm_options::add);
  fs::resize_file(shard(2), fs::file_size(shard(2)) - 1000);
  expect_error([&] { load(); }, {"model-00002-of-00002.safetensors", "past the end", "truncated"});
}

TEST_F(BadCheckpoint, UnreadableShard) {
  // A shard that is not a regular file (root can read any file, so a directory stands in for "unreadable").
  fs::remove(shard(2));
  fs::create_directory(shard(2));
  expect_error([&] { load(); }, {"model-00002-of-00002.safetensors", "not a regular file"});
  fs::remove(shard(2));
  expect_error([&] { load(); }, {"model-00002-of-00002.safetensors", "cannot open"});
}

TEST_F(BadCheckpoint, NoWeightFiles) {
  fs::remove(fs::path(dir_) / "model.safetensors.index.json");
  expect_error([&] { Checkpoint c(dir_); }, {"no model.safetensors"});
}

TEST_F(BadCheckpoint, WrongDtypeForWeight) {
  // Re-write the router of layer 1 as I32: a dtype no projection may have.
  SafetensorsFile f(shard(1));
  std::vector<NamedTensor> tensors;
  for (const auto& e : f.entries()) {
    TensorView v = f.view(e);
    if (e.name == "model.layers.1.mlp.gate.weight") v.dtype = DType::I32, v.shape = Shape{16, 128};
    tensors.push_back({e.name, v});
  }
  write_safetensors(shard(1) + ".new", tensors);
  fs::rename(shard(1) + ".new", shard(1));
  expect_error([&] { load(); }, {"model.layers.1.mlp.gate.weight"});
}

TEST_F(BadCheckpoint, Fp8WeightWithoutScale) {
  const std::string fp8 = test::temp_path("fp8");
  fs::remove_all(fp8);
  fs::create_directories(fp8);
  fs::copy_file(fs::path(test::kTinyModelFp8) / "config.json", fs::path(fp8) / "config.json");
  SafetensorsFile f(std::string(test::kTinyModelFp8) + "/model.safetensors");
  std::vector<NamedTensor> tensors;
  for (const auto& e : f.entries())
    if (e.name != "model.layers.1.self_attn.kv_b_proj.weight_scale_inv") tensors.push_back({e.name, f.view(e)});
  write_safetensors(fp8 + "/model.safetensors", tensors);
  expect_error([&] {
    auto backend = make_cpu_backend();
    DeepseekV3 model(fp8, *backend);
  }, {"model.layers.1.self_attn.kv_b_proj.weight", "weight_scale_inv"});
  fs::remove_all(fp8);
}

TEST_F(BadCheckpoint, TokenOutsideVocabulary) {
  auto backend = make_cpu_backend();
  DeepseekV3 model(test::kTinyModel, *backend);
  LatentCache cache(model.config(), *backend, 1, 16, model.cache_layers());
  expect_error([&] { model.forward({SequenceChunk{{5, 2048}, 0, {0}, false}}, cache); }, {"2048", "outside the vocabulary"});
  expect_error([&] { model.forward({SequenceChunk{{-1}, 0, {0}, false}}, cache); }, {"-1", "outside the vocabulary"});
}

// The header parser on its own (the fuzz target's entry point).
TEST(SafetensorsHeader, RejectsEveryInconsistency) {
  const std::string src = "x.safetensors";
  expect_error([&] { parse_safetensors_header("not json", 0, src); }, {src, "not valid JSON"});
  expect_error([&] { parse_safetensors_header("[1,2]", 0, src); }, {src, "not a JSON object"});
  expect_error([&] { parse_safetensors_header(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", 2, src); },
               {"'a'", "unsupported dtype Q4"});
  expect_error([&] { parse_safetensors_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4, src); },
               {"'a'", "past the end"});
  expect_error([&] { parse_safetensors_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 8, src); },
               {"'a'", "do not match"});
  expect_error([&] { parse_safetensors_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8, src); },
               {"'a'", "end before"});
  expect_error([&] { parse_safetensors_header(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, src); },
               {"'a'", "shape"});
  expect_error([&] { parse_safetensors_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8, src); },
               {"'a'", "data_offsets"});
  expect_error([&] {
    parse_safetensors_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12, src);
  }, {"overlap"});
  expect_error([&] { parse_safetensors_header(R"({"a":{"dtype":"F32","shape":[1,1,1,1,1],"data_offsets":[0,4]}})", 4, src); },
               {"'a'", "rank"});
  const auto ok = parse_safetensors_header(
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[12,16]}})",
      16, src);
  ASSERT_EQ(ok.size(), 2u);
}

TEST(SafetensorsFile, TooShortAndHeaderPastEnd) {
  const std::string p = test::temp_path("short.safetensors");
  { std::ofstream(p, std::ios::binary) << "abc"; }
  expect_error([&] { SafetensorsFile f(p); }, {p, "too short"});
  write_raw(p, "{}", 0);
  {
    std::fstream f(p, std::ios::binary | std::ios::in | std::ios::out);
    const uint64_t huge = 1ull << 40;
    f.write(reinterpret_cast<const char*>(&huge), 8);
  }
  expect_error([&] { SafetensorsFile f(p); }, {p, "header length", "truncated"});
  fs::remove(p);
}

TEST(SafetensorsFile, RoundTripsWhatItWrites) {
  const std::string p = test::temp_path("rt.safetensors");
  Tensor a = Tensor::host(DType::F32, {2, 3});
  for (int i = 0; i < 6; ++i) a.as<float>()[i] = float(i) * 0.5f - 1.0f;
  write_safetensors(p, {{"a", a.view()}});
  SafetensorsFile f(p);
  ASSERT_EQ(f.entries().size(), 1u);
  const TensorView v = f.view(*f.find("a"));
  EXPECT_EQ(v.shape, (Shape{2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(v.as<float>()[i], float(i) * 0.5f - 1.0f);
  fs::remove(p);
}

// A scratch copy of the tiny DeepSeek-V3.2 model (sparse attention).
class BadV32Checkpoint : public BadCheckpoint {
 protected:
  std::string source() const override { return test::kTinyV32Model; }
  // Drops `name` from the index and from its shard (a checkpoint written without it).
  void drop_tensor(const std::string& name) {
    json index;
    {
      std::ifstream in(fs::path(dir_) / "model.safetensors.index.json");
      index = json::parse(in);
    }
    const std::string file = (fs::path(dir_) / index["weight_map"][name].get<std::string>()).string();
    index["weight_map"].erase(name);
    fs::permissions(fs::path(dir_) / "model.safetensors.index.json", fs::perms::owner_write, fs::perm_options::add);
    std::ofstream(fs::path(dir_) / "model.safetensors.index.json") << index.dump();
    std::vector<NamedTensor> kept;
    {
      SafetensorsFile f(file);
      for (const auto& e : f.entries())
        if (e.name != name) kept.push_back({e.name, f.view(e)});
      write_safetensors(file + ".new", kept);
    }
    fs::rename(file + ".new", file);
  }
};

TEST_F(BadV32Checkpoint, LoadsUntouched) { load(); }

TEST_F(BadV32Checkpoint, MissingIndexerTensorIsNamed) {
  for (const char* t : {"k_norm.bias", "weights_proj.weight"}) {
    SetUp();
    const std::string name = std::string("model.layers.2.self_attn.indexer.") + t;
    drop_tensor(name);
    expect_error([&] { load(); }, {"DeepseekV32ForCausalLM", "missing the indexer tensor", name});
  }
}

TEST_F(BadV32Checkpoint, IndexerFieldsMissingOrInvalid) {
  for (const char* field : {"index_n_heads", "index_head_dim", "index_topk"}) {
    json j = config();
    j.erase(field);
    write_config(j);
    expect_error([&] { load(); }, {"config.json", "missing required field", field});
    j = config();
    j[field] = 0;
    write_config(j);
    expect_error([&] { load(); }, {"config.json", field, "must be positive"});
    j[field] = "16";
    write_config(j);
    expect_error([&] { load(); }, {"config.json", field, "must be an integer"});
    SetUp();
  }
  json j = config();
  j["index_head_dim"] = 8;  // below qk_rope_head_dim 16
  write_config(j);
  expect_error([&] { load(); }, {"index_head_dim (8) must be at least qk_rope_head_dim (16)"});
  j["index_head_dim"] = 64;  // disagrees with the checkpoint's wk
  write_config(j);
  expect_error([&] { load(); }, {"model.layers.0.self_attn.indexer.wq_b.weight", "config.json implies"});
  j = config();
  j["index_head_dim"] = 32;
  j["q_lora_rank"] = 0;
  write_config(j);
  expect_error([&] { load(); }, {"DeepseekV32ForCausalLM needs q_lora_rank > 0"});
}

TEST_F(BadV32Checkpoint, ModelTypeAloneNamesTheArchitecture) {
  json j = config();
  j.erase("architectures");
  write_config(j);
  const ModelConfig c = ModelConfig::load(dir_);
  EXPECT_EQ(c.architecture, "DeepseekV32ForCausalLM");
  EXPECT_TRUE(c.sparse_attention());
}

}  // namespace
}  // namespace moe
