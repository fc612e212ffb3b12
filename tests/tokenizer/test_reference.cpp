// DeepSeek-V3's tokenizer against HF tokenizers 0.23.2 ids (tests/data/tiny-dsv3/tokenizer-reference.json), plus
// decoding and streaming detokenization.
#include <gtest/gtest.h>

#include "shared.h"
#include "tokenizer/tokenizer.h"

namespace moe {
namespace {

using test::deepseek_v3;
using test::reference;

TEST(TokenizerReference, EveryReferenceStringEncodesToHfIds) {
  const auto& cases = reference().at("encode");
  ASSERT_EQ(cases.size(), 157u);
  int mismatches = 0;
  for (const auto& c : cases) {
    const std::string text = c.at("text");
    const auto expected = c.at("ids").get<std::vector<int32_t>>();
    const auto ids = deepseek_v3().encode(text);
    if (ids != expected && ++mismatches <= 10)
      ADD_FAILURE() << "text " << nlohmann::json(text).dump() << "\n  got      " << nlohmann::json(ids).dump()
                    << "\n  expected " << nlohmann::json(expected).dump();
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(TokenizerReference, ReferenceIdsDecodeToTheirText) {
  for (const auto& c : reference().at("encode")) {
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(deepseek_v3().decode(ids), c.at("decoded").get<std::string>());
    EXPECT_EQ(deepseek_v3().decode(ids), c.at("text").get<std::string>());
  }
}

TEST(TokenizerReference, ChatRenderingIdsMatch) {
  for (const auto& c : reference().at("chat"))
    EXPECT_EQ(deepseek_v3().encode(c.at("text").get<std::string>()), c.at("ids").get<std::vector<int32_t>>());
}

TEST(TokenizerReference, SpecialTokensAndVocabulary) {
  const Tokenizer& t = deepseek_v3();
  EXPECT_EQ(t.bos_id(), 0);
  EXPECT_EQ(t.eos_id(), 1);
  EXPECT_EQ(t.token_id("<｜User｜>"), 128803);
  EXPECT_EQ(t.token_id("Hello"), 19923);
  EXPECT_EQ(t.token_id("no such token"), -1);
  EXPECT_EQ(t.id_to_token(128804), "<｜Assistant｜>");
  EXPECT_EQ(t.vocab_size(), 128815);
  EXPECT_TRUE(t.is_special(0));
  EXPECT_FALSE(t.is_special(128803));  // <｜User｜> is an added but not special token
  EXPECT_FALSE(t.is_special(19923));
  // add_special_tokens: tokenizer_config's add_bos_token puts BOS first (transformers' behaviour).
  EXPECT_EQ(t.encode("Hello, world!", true), (std::vector<int32_t>{0, 19923, 14, 2058, 3}));
  const std::vector<int32_t> with_specials{0, 19923, 1};
  EXPECT_EQ(t.decode(with_specials), "<｜begin▁of▁sentence｜>Hello<｜end▁of▁sentence｜>");
  EXPECT_EQ(t.decode(with_specials, /*skip_special_tokens=*/true), "Hello");
}

TEST(TokenizerReference, RoundTripsArbitraryText) {
  const std::vector<std::string> texts = {
      "Mixture-of-experts routing picks 8 of 256 experts per token.\n\n",
      "\t  mixed \r\n whitespace\u00a0and\u3000CJK 中文字符 with 数字 12345 and emoji 🧑‍🔬🏳️‍🌈",
      "<｜User｜>not at start<｜Assistant｜><｜tool▁calls▁begin｜>",
      std::string("nul\0byte", 8),
  };
  for (const auto& text : texts) EXPECT_EQ(deepseek_v3().decode(deepseek_v3().encode(text)), text);
}

TEST(TokenizerReference, InvalidUtf8IsEncodedByteForByteAndDecodesLossily) {
  // Documented behaviour: ill-formed bytes are byte-level tokens; decode_bytes() returns them exactly and decode()
  // replaces each maximal ill-formed subsequence with U+FFFD (HF's from_utf8_lossy).
  const std::string bad = "ok \xff\xfe then \xe4\xb8 cut and \xc0\xaf overlong \xed\xa0\x80 surrogate";
  const auto ids = deepseek_v3().encode(bad);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(deepseek_v3().decode_bytes(ids), bad);
  EXPECT_EQ(deepseek_v3().decode(ids),
            "ok \uFFFD\uFFFD then \uFFFD cut and \uFFFD\uFFFD overlong \uFFFD\uFFFD\uFFFD surrogate");
  // A lone invalid byte is one byte-level token.
  EXPECT_EQ(deepseek_v3().encode("\xff").size(), 1u);
}

std::vector<std::string> stream(const std::vector<int32_t>& ids) {
  StreamingDecoder decoder(deepseek_v3());
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(decoder.push(id));
  pieces.push_back(decoder.flush());
  return pieces;
}

std::string concat(const std::vector<std::string>& pieces) {
  std::string out;
  for (const auto& p : pieces) out += p;
  return out;
}

TEST(StreamingDecoder, CjkCharacterSplitAcrossByteTokensComesOutWhole) {
  // 龘 (U+9F98, E9 BE 98) as three single-byte tokens.
  std::vector<int32_t> ids;
  for (uint8_t byte : std::string("\xE9\xBE\x98"))
    ids.push_back(deepseek_v3().token_id(deepseek_v3().id_to_token(deepseek_v3().encode(std::string(1, byte))[0])));
  ids.insert(ids.begin(), deepseek_v3().encode("A")[0]);
  const auto pieces = stream(ids);
  EXPECT_EQ(pieces, (std::vector<std::string>{"A", "", "", "龘", ""}));
}

TEST(StreamingDecoder, EmojiWithJoinersIsNeverCutMidCharacter) {
  const std::string text = "family: 👨‍👩‍👧‍👦, flag 🏳️‍🌈, 深度求索 done";
  const auto ids = deepseek_v3().encode(text);
  const auto pieces = stream(ids);
  EXPECT_EQ(concat(pieces), text);
  bool some_token_was_partial = false;
  for (size_t i = 0; i < pieces.size(); ++i) {
    // Every piece is valid UTF-8 on its own.
    EXPECT_EQ(deepseek_v3().decode(deepseek_v3().encode(pieces[i])), pieces[i]);
    if (i < ids.size() && pieces[i].empty()) some_token_was_partial = true;
  }
  EXPECT_TRUE(some_token_was_partial) << "the test text should split some character across tokens";
}

TEST(StreamingDecoder, FlushEmitsAnUnfinishedCharacterAsReplacement) {
  StreamingDecoder decoder(deepseek_v3());
  const auto ids = deepseek_v3().encode("\xE9\xBE");  // the first two bytes of 龘
  std::string out;
  for (int32_t id : ids) out += decoder.push(id);
  EXPECT_EQ(out, "");
  EXPECT_EQ(decoder.flush(), "\uFFFD");
  EXPECT_EQ(decoder.push(deepseek_v3().encode("x")[0]), "x");  // usable again after a flush
}

TEST(StreamingDecoder, SkipsSpecialTokensWhenAsked) {
  StreamingDecoder decoder(deepseek_v3(), /*skip_special_tokens=*/true);
  std::string out = decoder.push(0);
  for (int32_t id : deepseek_v3().encode("Hi there")) out += decoder.push(id);
  out += decoder.push(1) + decoder.flush();
  EXPECT_EQ(out, "Hi there");
}

}  // namespace
}  // namespace moe
