// Bad input gives a clear moe::Error (never a crash or a silent wrong answer).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "core/error.h"
#include "shared.h"
#include "tokenizer/tokenizer.h"

namespace moe {
namespace {

using json = nlohmann::json;

// The error message must contain `needle`.
template <typename F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

std::string small_tokenizer(const json& merges, const json& extra = json::object()) {
  json spec = {{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}}}, {"merges", merges}}}};
  for (const auto& [k, v] : extra.items()) spec[k] = v;
  return spec.dump();
}

TEST(TokenizerErrors, MalformedJson) {
  expect_error([] { Tokenizer::from_json("{\"model\": "); }, "not valid JSON");
  expect_error([] { Tokenizer::from_json("[1, 2]"); }, "no \"model\"");
  expect_error([] { Tokenizer::from_json(small_tokenizer(json::array()), "{bad"); }, "tokenizer_config.json");
}

TEST(TokenizerErrors, TruncatedTokenizerJson) {
  std::ifstream in("models/deepseek-v3-tokenizer/tokenizer.json", std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string full = buffer.str();
  ASSERT_GT(full.size(), 1000000u);
  expect_error([&] { Tokenizer::from_json(full.substr(0, full.size() / 2)); }, "not valid JSON");
}

TEST(TokenizerErrors, VocabIdsFarPastTheVocabulary) {  // found by fuzz_tokenizer_json: a 2^31 id allocated 64 GB
  expect_error([] { Tokenizer::from_json(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 2000000000}}})"); },
               "vocab id 2000000000 is far past the vocabulary's 2 entries");
}

TEST(TokenizerErrors, MergeNamingAnUnknownToken) {
  expect_error([] { Tokenizer::from_json(small_tokenizer(json::array({"a c"}))); }, "'c' which is not in the vocabulary");
  expect_error([] { Tokenizer::from_json(small_tokenizer(json::array({"b a"}))); }, "'ba' which is not in the vocabulary");
  expect_error([] { Tokenizer::from_json(small_tokenizer(json::array({"ab"}))); }, "two tokens");
  expect_error([] { Tokenizer::from_json(small_tokenizer(json::array({7}))); }, "merge #0");
}

TEST(TokenizerErrors, UnsupportedPiecesAreNamed) {
  expect_error([] { Tokenizer::from_json(R"({"model": {"type": "WordPiece", "vocab": {}}})"); }, "WordPiece");
  expect_error([] { Tokenizer::from_json(small_tokenizer(json::array(), {{"pre_tokenizer", {{"type", "Mystery"}}}})); },
               "Mystery");
  expect_error(
      [] {
        Tokenizer::from_json(small_tokenizer(
            json::array(), {{"pre_tokenizer", {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}}}}));
      },
      "invalid regex");
  expect_error([] { Tokenizer::from_json(small_tokenizer(json::array(), {{"model", {{"type", "BPE"}, {"vocab", {{"a", -1}}}}}})); },
               "invalid id");
  expect_error([] { Tokenizer::from_json(small_tokenizer(json::array()), R"({"bos_token": "<s>"})"); }, "bos_token '<s>'");
  expect_error([] { Tokenizer::load("tests/data/no-such-tokenizer"); }, "cannot read");
}

TEST(TokenizerErrors, IdsOutsideTheVocabularyOnDecode) {
  const Tokenizer& t = test::deepseek_v3();
  const std::vector<int32_t> too_big{19923, 128815};
  expect_error([&] { t.decode(too_big); }, "token id 128815 is outside the vocabulary");
  const std::vector<int32_t> negative{-1};
  expect_error([&] { t.decode(negative); }, "token id -1");
  expect_error([&] { t.id_to_token(1 << 30); }, "outside the vocabulary");
  // The streaming decoder reports it too and keeps working.
  StreamingDecoder decoder(t);
  EXPECT_EQ(decoder.push(19923), "Hello");
  EXPECT_THROW(decoder.push(999999), Error);
  EXPECT_EQ(decoder.push(14), ",");
}

TEST(TokenizerErrors, InvalidUtf8NeverCrashes) {
  // Documented behaviour (tokenizer.h): every byte is encoded; decode_bytes gives the input back exactly.
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) all_bytes += static_cast<char>(b);
  const Tokenizer& t = test::deepseek_v3();
  for (const std::string& text : {all_bytes, std::string("\x80"), std::string("<｜User｜\xff>"), std::string("\xf0\x9f\x98")})
    EXPECT_EQ(t.decode_bytes(t.encode(text)), text);
}

}  // namespace
}  // namespace moe
