// generation_config.json: the sampling defaults a checkpoint recommends, and every way the file can be wrong.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "engine/sampler.h"
#include "io/generation_config.h"

namespace moe {
namespace {

std::string error_of(const std::string& text) {
  try {
    parse_generation_config(text, "dir/generation_config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(GenerationConfig, DeepSeekV3sFile) {
  // As published with deepseek-ai/DeepSeek-V3 (token ids and the HF version are ignored).
  const GenerationDefaults g = parse_generation_config(
      R"({"_from_model_config": true, "bos_token_id": 0, "eos_token_id": 1, "do_sample": true,
          "temperature": 0.6, "top_p": 0.95, "transformers_version": "4.46.3"})",
      "g");
  EXPECT_EQ(g.do_sample, true);
  EXPECT_DOUBLE_EQ(*g.temperature, 0.6);
  EXPECT_DOUBLE_EQ(*g.top_p, 0.95);
  EXPECT_FALSE(g.top_k);
  EXPECT_FALSE(g.min_p);
  EXPECT_FALSE(g.repetition_penalty);
  const SamplingParams p = apply_generation_defaults({}, g);
  EXPECT_FLOAT_EQ(p.temperature, 0.6f);
  EXPECT_FLOAT_EQ(p.top_p, 0.95f);
  EXPECT_EQ(p.top_k, 0);
  EXPECT_FLOAT_EQ(p.repetition_penalty, 1.0f);
}

TEST(GenerationConfig, EveryKeyAndNulls) {
  const GenerationDefaults g = parse_generation_config(
      R"({"temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.2,
          "eos_token_id": [1, 2], "max_new_tokens": null, "do_sample": null})",
      "g");
  EXPECT_FALSE(g.do_sample);
  SamplingParams base;
  base.temperature = 0.1f;
  base.seed = 7;
  const SamplingParams p = apply_generation_defaults(base, g);
  EXPECT_FLOAT_EQ(p.temperature, 0.7f);
  EXPECT_FLOAT_EQ(p.top_p, 0.9f);
  EXPECT_EQ(p.top_k, 40);
  EXPECT_FLOAT_EQ(p.min_p, 0.05f);
  EXPECT_FLOAT_EQ(p.repetition_penalty, 1.2f);
  EXPECT_EQ(p.seed, 7u);  // what the file does not set stays base's
  EXPECT_TRUE(parse_generation_config("{}", "g").empty());
  EXPECT_TRUE(parse_generation_config(R"({"temperature": null})", "g").empty());
}

TEST(GenerationConfig, DoSampleFalseIsGreedy) {
  // HF transformers: do_sample false decodes greedily whatever the temperature.
  const GenerationDefaults g = parse_generation_config(R"({"do_sample": false, "temperature": 0.6, "top_p": 0.9})", "g");
  const SamplingParams p = apply_generation_defaults({}, g);
  EXPECT_EQ(p.temperature, 0.0f);
  EXPECT_FLOAT_EQ(p.top_p, 0.9f);
}

TEST(GenerationConfig, ErrorsNameTheFileAndTheKey) {
  const struct {
    const char* text;
    const char* want;
  } cases[] = {
      {"{", "not valid JSON"},
      {"", "not valid JSON"},
      {"[0.6]", "expected a JSON object, got array"},
      {R"("temperature")", "expected a JSON object, got string"},
      {R"({"temperature": "0.6"})", "'temperature' must be a number, not string"},
      {R"({"temperature": -0.1})", "'temperature' is -0.1 (expected a number >= 0)"},
      {R"({"top_p": 0})", "'top_p' is 0 (expected a number in (0, 1])"},
      {R"({"top_p": 1.5})", "'top_p' is 1.5 (expected a number in (0, 1])"},
      {R"({"min_p": 2})", "'min_p' is 2 (expected a number in [0, 1])"},
      {R"({"repetition_penalty": 0})", "'repetition_penalty' is 0 (expected a number > 0)"},
      {R"({"repetition_penalty": true})", "'repetition_penalty' must be a number, not boolean"},
      {R"({"top_k": -1})", "'top_k' must be a non-negative integer, not -1"},
      {R"({"top_k": 1.5})", "'top_k' must be a non-negative integer, not 1.5"},
      {R"({"top_k": 99999999999})", "'top_k' must be a non-negative integer, not 99999999999"},
      {R"({"do_sample": "yes"})", "'do_sample' must be true or false, not \"yes\""},
      {R"({"do_sample": 1})", "'do_sample' must be true or false, not 1"},
  };
  for (const auto& c : cases) {
    const std::string e = error_of(c.text);
    EXPECT_NE(e.find("dir/generation_config.json: "), std::string::npos) << c.text << " -> " << e;
    EXPECT_NE(e.find(c.want), std::string::npos) << c.text << " -> " << e;
  }
}

TEST(GenerationConfig, LoadFromADirectory) {
  const auto dir = std::filesystem::temp_directory_path() / ("moe-genconf-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  EXPECT_TRUE(load_generation_config(dir.string()).empty());  // no file: no defaults
  EXPECT_TRUE(load_generation_config((dir / "absent").string()).empty());
  std::ofstream(dir / "generation_config.json") << R"({"do_sample": true, "temperature": 0.3})";
  EXPECT_DOUBLE_EQ(*load_generation_config(dir.string()).temperature, 0.3);
  std::ofstream(dir / "generation_config.json") << R"({"top_p": "high"})";
  try {
    load_generation_config(dir.string());
    ADD_FAILURE() << "a malformed file must be an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "generation_config.json").string() + ": 'top_p' must be a number"),
              std::string::npos)
        << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe
