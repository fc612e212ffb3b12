// tiktoken-style tokenizers (Kimi-K2): a vocabulary made from DeepSeek-V3's merges
// (tests/data/kimi-tiktoken, scripts/make_tiktoken_test_vocab.py) encoded and decoded against an independent Python
// implementation of tiktoken's encoder on 200 strings; the tiktoken.model parser's errors, each naming the line.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace moe {
namespace {

using json = nlohmann::json;

const Tokenizer& kimi() {
  static const Tokenizer t = Tokenizer::load("tests/data/kimi-tiktoken");
  return t;
}

const json& reference() {
  static const json r = json::parse(std::ifstream("tests/data/kimi-tiktoken/reference.json"));
  return r;
}

TEST(Tiktoken, LoadsRanksAndSpecialTokens) {
  const int32_t n = reference().at("ranks");
  EXPECT_EQ(kimi().vocab_size(), n + 258);  // 256 reserved + 2 special ids after the ranks, as Kimi's tokenizer has
  EXPECT_EQ(kimi().bos_id(), n);
  EXPECT_EQ(kimi().eos_id(), n + 1);
  EXPECT_EQ(kimi().token_id("<|im_end|>"), n + 2);
  EXPECT_EQ(kimi().token_id("<|reserved_token_" + std::to_string(n + 100) + "|>"), n + 100);
  EXPECT_TRUE(kimi().is_special(n + 2));
  EXPECT_FALSE(kimi().is_special(n - 1));
  EXPECT_EQ(kimi().id_to_token(104), "h");  // rank = id; tokens are raw bytes
}

TEST(Tiktoken, EncodeAndDecodeMatchThePythonReference) {
  const json& cases = reference().at("cases");
  ASSERT_EQ(cases.size(), 200u);
  for (const json& c : cases) {
    const std::string text = c.at("text");
    const auto want = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(kimi().encode(text), want) << text;
    EXPECT_EQ(kimi().decode(want), text);
    StreamingDecoder stream(kimi());
    std::string streamed;
    for (int32_t id : want) streamed += stream.push(id);
    streamed += stream.flush();
    EXPECT_EQ(streamed, text);
  }
}

TEST(Tiktoken, LongRunsOfOneCharacterEncodeQuickly) {
  // One pre-token of 200k bytes: byte-pair merging must not be quadratic in it (the test would take minutes).
  for (const std::string& run : {std::string(200000, ' ') + "x", std::string(200000, 'a')}) {
    const auto ids = kimi().encode(run);
    EXPECT_EQ(kimi().decode(ids), run);
  }
  // "aa" is a token of the test vocabulary and "aaa"/"aaaa" are not: merging the leftmost lowest pair first pairs
  // the run up from the left.
  ASSERT_GE(kimi().token_id("aa"), 0);
  ASSERT_LT(kimi().token_id("aaaa"), 0);
  EXPECT_EQ(kimi().encode(std::string(200000, 'a')), std::vector<int32_t>(100000, kimi().token_id("aa")));
}

TEST(Tiktoken, InvalidUtf8RoundTripsAsBytes) {
  const std::string bad = "ok\xff\xfe" "a\xe6\x95";
  const auto ids = kimi().encode(bad);
  EXPECT_EQ(kimi().decode_bytes(ids), bad);
}

std::string error_of(const std::string& model, const std::string& config = "") {
  try {
    Tokenizer::from_tiktoken(model, config, "t.model");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// All 256 single bytes, ranks 0..255, as a tiktoken.model needs them.
std::string bytes_model() {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string s;
  for (int b = 0; b < 256; ++b) {
    const int v = b << 16;  // one byte: 2 base64 characters and "=="
    s += std::string{kAlphabet[v >> 18 & 63], kAlphabet[v >> 12 & 63], '=', '='} + " " + std::to_string(b) + "\n";
  }
  return s;
}

TEST(Tiktoken, ParserErrorsNameTheLine) {
  EXPECT_EQ(error_of(bytes_model()), "(no error)");
  const std::string base = bytes_model();  // 256 lines
  EXPECT_NE(error_of(base + "aGk* 256\n").find("t.model line 257: 'aGk*' is not valid base64"), std::string::npos);
  EXPECT_NE(error_of(base + "aGk 256\n").find("line 257: 'aGk' is not valid base64"), std::string::npos);
  EXPECT_NE(error_of(base + "aGk=\n").find("line 257: expected 'base64-token rank'"), std::string::npos);
  EXPECT_NE(error_of(base + "aGk= x1\n").find("line 257: rank 'x1' is not a non-negative integer"), std::string::npos);
  EXPECT_NE(error_of(base + "aGk= 12\n").find("line 257: duplicate rank 12 (first on line 13)"), std::string::npos);
  EXPECT_NE(error_of(base + "QQ== 256\n").find("line 257: duplicate token (base64 'QQ==')"), std::string::npos);
  EXPECT_NE(error_of(base + "aGk= 300\n").find("line 257: rank 300 is past the last id: the 257 tokens must have the "
                                               "ranks 0 to 256"),
            std::string::npos);
  EXPECT_NE(error_of(base + "aGk= 2147483647\n").find("line 257: rank 2147483647 is past the last id"),
            std::string::npos);
  EXPECT_NE(error_of(base.substr(base.find('\n') + 1)).find("line 255: rank 255 is past the last id"),
            std::string::npos);
  EXPECT_NE(error_of("").find("t.model: no tokens"), std::string::npos);
  EXPECT_NE(error_of(base, R"({"added_tokens_decoder": {"7": {"content": "x"}}})")
                .find("added_tokens_decoder id 7 is one of tiktoken.model's ranks"),
            std::string::npos);
  EXPECT_NE(error_of(base, R"({"added_tokens_decoder": {"x": {"content": "x"}}})").find("key 'x' is not a token id"),
            std::string::npos);
  EXPECT_NE(error_of(base, R"({"bos_token": "[NOPE]"})").find("bos_token '[NOPE]' is not a token"), std::string::npos);
}

TEST(Tiktoken, MissingFilesAreNamed) {
  const auto dir = std::filesystem::temp_directory_path() / "moe_tiktoken_missing";
  std::filesystem::create_directories(dir);
  try {
    Tokenizer::load(dir.string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string want = "cannot read " + (dir / "tokenizer.json").string() + " (and there is no tiktoken.model";
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe
