// Pipeline stages on hand-built tokenizer.json snippets. Expected outputs are HF tokenizers' documented behaviour:
// the SplitDelimiterBehavior examples of the Python docs ("the-final--countdown"), and the unit tests in the
// tokenizers crate for Whitespace, Digits, Metaspace and ByteLevel ("Hey friend!", "Hey 123 friend!", ...).
// The pre-tokenizer, decoder and added-token cases were also run through HF tokenizers 0.23.2 (Python, same JSON
// snippets) and gave these results; the Normalizers and Bpe cases come from the HF semantics as we know them.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/components.h"
#include "tokenizer/tokenizer.h"

namespace moe {
namespace {

using json = nlohmann::json;

std::vector<std::string> pre_tokenize(const json& spec, std::vector<tok::Piece> pieces) {
  tok::make_pre_tokenizer(spec)->split(pieces);
  std::vector<std::string> out;
  for (const auto& p : pieces) out.push_back(p.text);
  return out;
}
std::vector<std::string> pre_tokenize(const json& spec, const std::string& text) {
  return pre_tokenize(spec, {{text, true}});
}

json split(const std::string& behavior, bool invert = false, const std::string& literal = "-") {
  return {{"type", "Split"}, {"pattern", {{"String", literal}}}, {"behavior", behavior}, {"invert", invert}};
}

using Strings = std::vector<std::string>;

TEST(PreTokenizers, SplitBehaviorsOnTheFinalCountdown) {
  const std::string text = "the-final--countdown";
  EXPECT_EQ(pre_tokenize(split("Removed"), text), (Strings{"the", "final", "countdown"}));
  EXPECT_EQ(pre_tokenize(split("Isolated"), text), (Strings{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(pre_tokenize(split("MergedWithPrevious"), text), (Strings{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(pre_tokenize(split("MergedWithNext"), text), (Strings{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(pre_tokenize(split("Contiguous"), text), (Strings{"the", "-", "final", "--", "countdown"}));
}

TEST(PreTokenizers, SplitInvertKeepsTheMatches) {
  // invert: matches become the pieces that are kept/isolated; Removed then drops what did not match.
  const json spec = {{"type", "Split"}, {"pattern", {{"Regex", R"(\w+|[^\w\s]+)"}}}, {"behavior", "Removed"}, {"invert", true}};
  EXPECT_EQ(pre_tokenize(spec, "Hey friend!"), (Strings{"Hey", "friend", "!"}));
  // Inverted Isolated is the same split as plain Isolated.
  EXPECT_EQ(pre_tokenize(split("Isolated", true), "a-b"), (Strings{"a", "-", "b"}));
  // Inverted MergedWithPrevious: the non-dash runs merge into the preceding dash.
  EXPECT_EQ(pre_tokenize(split("MergedWithPrevious", true), "-a-b"), (Strings{"-a", "-b"}));
}

TEST(PreTokenizers, SplitRegexIsUnicodeAware) {
  const json spec = {{"type", "Split"}, {"pattern", {{"Regex", R"(\p{N}{1,3})"}}}, {"behavior", "Isolated"}, {"invert", false}};
  EXPECT_EQ(pre_tokenize(spec, "x1234５６y"), (Strings{"x", "123", "4５６", "y"}));
}

TEST(PreTokenizers, RegexKnowsUnicode16Categories) {
  // U+1FA77 PINK HEART (Unicode 15.0, So) and U+1B4E BALINESE INVERTED CARET (Unicode 16.0, Po): HF's Oniguruma has
  // Unicode 16 tables, Debian 12's PCRE2 only Unicode 14, so the tokenizer adds the newer code points itself.
  const json symbols = {{"type", "Split"}, {"pattern", {{"Regex", R"([\p{P}\p{S}]+)"}}}, {"behavior", "Isolated"}, {"invert", false}};
  EXPECT_EQ(pre_tokenize(symbols, "a\U0001FA77\u1B4Eb"), (Strings{"a", "\U0001FA77\u1B4E", "b"}));
  const json not_letters = {{"type", "Split"}, {"pattern", {{"Regex", R"(\P{L}+)"}}}, {"behavior", "Removed"}, {"invert", false}};
  EXPECT_EQ(pre_tokenize(not_letters, "x\U0001FA77y"), (Strings{"x", "y"}));
  const json single = {{"type", "Split"}, {"pattern", {{"Regex", R"(\pS)"}}}, {"behavior", "Removed"}, {"invert", false}};
  EXPECT_EQ(pre_tokenize(single, "x\U0001FA77y"), (Strings{"x", "y"}));
}

TEST(PreTokenizers, RegexWordClassIsOniguruma) {
  // HF compiles Split patterns with Oniguruma, whose Unicode \w includes combining marks (PCRE2 10.42's does not).
  const json words = {{"type", "Split"}, {"pattern", {{"Regex", R"(\w+)"}}}, {"behavior", "Removed"}, {"invert", true}};
  EXPECT_EQ(pre_tokenize(words, "cafe\u0301 ok"), (Strings{"cafe\u0301", "ok"}));
  const json split_on_non_words = {{"type", "Split"}, {"pattern", {{"Regex", R"(\W+)"}}}, {"behavior", "Removed"}, {"invert", false}};
  EXPECT_EQ(pre_tokenize(split_on_non_words, "na\u0308ive, x_1"), (Strings{"na\u0308ive", "x_1"}));
}

TEST(PreTokenizers, Whitespace) {
  const json spec = {{"type", "Whitespace"}};
  EXPECT_EQ(pre_tokenize(spec, "Hey man!"), (Strings{"Hey", "man", "!"}));
  EXPECT_EQ(pre_tokenize(spec, "How are you doing?"), (Strings{"How", "are", "you", "doing", "?"}));
  EXPECT_EQ(pre_tokenize(spec, "\n"), Strings{});
  EXPECT_EQ(pre_tokenize(spec, "café, naïve"), (Strings{"café", ",", "naïve"}));
  EXPECT_EQ(pre_tokenize({{"type", "WhitespaceSplit"}}, "Hey man!\t x"), (Strings{"Hey", "man!", "x"}));
}

TEST(PreTokenizers, Digits) {
  EXPECT_EQ(pre_tokenize({{"type", "Digits"}, {"individual_digits", true}}, "Hey 123 friend!"),
            (Strings{"Hey ", "1", "2", "3", " friend!"}));
  EXPECT_EQ(pre_tokenize({{"type", "Digits"}, {"individual_digits", false}}, "Hey 123 friend!"),
            (Strings{"Hey ", "123", " friend!"}));
}

TEST(PreTokenizers, Metaspace) {
  const json always = {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "always"}, {"split", true}};
  EXPECT_EQ(pre_tokenize(always, "Hey friend!"), (Strings{"▁Hey", "▁friend!"}));
  EXPECT_EQ(pre_tokenize(always, "Hey   friend!"), (Strings{"▁Hey", "▁", "▁", "▁friend!"}));
  json no_split = always;
  no_split["split"] = false;
  EXPECT_EQ(pre_tokenize(no_split, "Hey friend!"), (Strings{"▁Hey▁friend!"}));
  // "first": only a piece that starts the input gets the prefix (one after an added token does not).
  json first = always;
  first["prepend_scheme"] = "first";
  EXPECT_EQ(pre_tokenize(first, {{"Hey", true}, {"friend", false}}), (Strings{"▁Hey", "friend"}));
  json never = always;
  never["prepend_scheme"] = "never";
  EXPECT_EQ(pre_tokenize(never, "Hey friend"), (Strings{"Hey", "▁friend"}));
}

TEST(PreTokenizers, ByteLevel) {
  const json spec = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  EXPECT_EQ(pre_tokenize(spec, "Hello my friend, how is your day going?"),
            (Strings{"Hello", "Ġmy", "Ġfriend", ",", "Ġhow", "Ġis", "Ġyour", "Ġday", "Ġgoing", "?"}));
  json prefixed = spec;
  prefixed["add_prefix_space"] = true;
  EXPECT_EQ(pre_tokenize(prefixed, "Hello"), (Strings{"ĠHello"}));
  json whole = spec;
  whole["use_regex"] = false;
  EXPECT_EQ(pre_tokenize(whole, "a b\n"), (Strings{"aĠbĊ"}));
  EXPECT_EQ(pre_tokenize(spec, "it's"), (Strings{"it", "'s"}));
}

TEST(PreTokenizers, SequenceAndUnsupported) {
  const json spec = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "WhitespaceSplit"}}, {{"type", "Digits"}, {"individual_digits", true}}}}};
  EXPECT_EQ(pre_tokenize(spec, "ab12 c"), (Strings{"ab", "1", "2", "c"}));
  EXPECT_THROW(tok::make_pre_tokenizer({{"type", "UnicodeScripts"}}), Error);
  EXPECT_THROW(tok::make_pre_tokenizer(split("Sideways")), Error);
}

std::string normalize(const json& spec, std::string text) {
  tok::make_normalizer(spec)->normalize(text);
  return text;
}

TEST(Normalizers, PrependReplaceStripSequence) {
  EXPECT_EQ(normalize({{"type", "Prepend"}, {"prepend", "▁"}}, "hi"), "▁hi");
  EXPECT_EQ(normalize({{"type", "Prepend"}, {"prepend", "▁"}}, ""), "");
  EXPECT_EQ(normalize({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}, "a b  c"), "a▁b▁▁c");
  EXPECT_EQ(normalize({{"type", "Replace"}, {"pattern", {{"Regex", R"(\s+)"}}}, {"content", "_"}}, "a \t b"), "a_b");
  EXPECT_EQ(normalize({{"type", "Strip"}, {"strip_left", true}, {"strip_right", false}}, "  x  "), "x  ");
  const json llama = {{"type", "Sequence"},
                      {"normalizers", {{{"type", "Prepend"}, {"prepend", "▁"}},
                                       {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}}}};
  EXPECT_EQ(normalize(llama, "Hey friend"), "▁Hey▁friend");
  EXPECT_EQ(normalize({{"type", "Sequence"}, {"normalizers", json::array()}}, "as is"), "as is");
  EXPECT_THROW(tok::make_normalizer({{"type", "Precompiled"}}), Error);
}

#ifdef MOE_TOKENIZER_HAS_ICU  // built with ICU (optional dependency)
TEST(Normalizers, UnicodeFormsAndLowercase) {
  EXPECT_EQ(normalize({{"type", "NFC"}}, "e\u0301"), "é");
  EXPECT_EQ(normalize({{"type", "NFD"}}, "é"), "e\u0301");
  EXPECT_EQ(normalize({{"type", "NFKC"}}, "ｆｕｌｌ①"), "full1");
  EXPECT_EQ(normalize({{"type", "Lowercase"}}, "ÀB İ Σ"), "àb i\u0307 σ");  // per character: no final sigma
}
#endif

std::string decode(const json& spec, std::vector<std::string> tokens) {
  tok::make_decoder(spec)->decode(tokens, false);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

TEST(Decoders, EachKind) {
  EXPECT_EQ(decode({{"type", "ByteLevel"}}, {"Hello", "Ġw", "orld", "Ċ", "ä¸Ń"}), "Hello world\n中");
  EXPECT_EQ(decode({{"type", "ByteLevel"}}, {"ä¸"}), "\uFFFD");  // incomplete UTF-8 is replaced
  EXPECT_EQ(decode({{"type", "ByteFallback"}}, {"a", "<0xE4>", "<0xB8>", "<0xAD>", "b"}), "a中b");
  EXPECT_EQ(decode({{"type", "ByteFallback"}}, {"<0xE4>", "<0xB8>", "x"}), "\uFFFD\uFFFDx");  // one per byte
  EXPECT_EQ(decode({{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "always"}}, {"▁Hey", "▁friend!"}),
            "Hey friend!");
  EXPECT_EQ(decode({{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "never"}}, {"▁Hey"}), " Hey");
  EXPECT_EQ(decode({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}, {"  a ", " b"}), " a b");
  EXPECT_EQ(decode({{"type", "Replace"}, {"pattern", {{"String", "▁"}}}, {"content", " "}}, {"▁a▁b"}), " a b");
  const json llama = {{"type", "Sequence"},
                      {"decoders", {{{"type", "Replace"}, {"pattern", {{"String", "▁"}}}, {"content", " "}},
                                    {{"type", "ByteFallback"}},
                                    {{"type", "Fuse"}},
                                    {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  EXPECT_EQ(decode(llama, {"▁Hello", "▁world", "<0x21>"}), "Hello world!");
  EXPECT_THROW(tok::make_decoder({{"type", "WordPiece"}}), Error);
}

// A character-level tokenizer: every byte of printable ASCII is a token, ids 0..94, plus the given extras.
std::string char_tokenizer(const json& added_tokens, const json& normalizer = nullptr, const json& merges = json::array(),
                           const json& extra_vocab = json::object(), const json& model_flags = json::object()) {
  json vocab = json::object();
  for (int c = 32; c < 127; ++c) vocab[std::string(1, static_cast<char>(c))] = c - 32;
  for (const auto& [k, v] : extra_vocab.items()) vocab[k] = v;
  json model = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}};
  for (const auto& [k, v] : model_flags.items()) model[k] = v;
  return json{{"added_tokens", added_tokens}, {"normalizer", normalizer}, {"model", model}}.dump();
}

json added(int id, const std::string& content, bool lstrip = false, bool rstrip = false, bool single_word = false,
           bool normalized = false) {
  return {{"id", id}, {"content", content}, {"lstrip", lstrip}, {"rstrip", rstrip}, {"single_word", single_word},
          {"normalized", normalized}, {"special", true}};
}

Strings tokens_of(const Tokenizer& t, const std::string& text) {
  Strings out;
  for (int32_t id : t.encode(text)) out.push_back(t.id_to_token(id));
  return out;
}

TEST(AddedTokens, LongestMatchWins) {
  const Tokenizer t = Tokenizer::from_json(char_tokenizer({added(100, "<a>"), added(101, "<a><b>")}));
  EXPECT_EQ(tokens_of(t, "x<a><b>y<a>"), (Strings{"x", "<a><b>", "y", "<a>"}));
}

TEST(AddedTokens, LstripAndRstripTakeTheNeighbouringWhitespace) {
  const Tokenizer left = Tokenizer::from_json(char_tokenizer(json::array({added(100, "<m>", /*lstrip=*/true)})));
  EXPECT_EQ(tokens_of(left, "a  <m> b"), (Strings{"a", "<m>", " ", "b"}));
  const Tokenizer right = Tokenizer::from_json(char_tokenizer(json::array({added(100, "<m>", false, /*rstrip=*/true)})));
  EXPECT_EQ(tokens_of(right, "a <m>  b"), (Strings{"a", " ", "<m>", "b"}));
}

TEST(AddedTokens, SingleWordOnlyMatchesAWholeWord) {
  const Tokenizer t = Tokenizer::from_json(char_tokenizer(json::array({added(100, "ab", false, false, /*single_word=*/true)})));
  EXPECT_EQ(tokens_of(t, "ab cab ab_ ab."), (Strings{"ab", " ", "c", "a", "b", " ", "a", "b", "_", " ", "ab", "."}));
}

TEST(AddedTokens, NormalizedTokensMatchTheNormalizedText) {
  // Normalizer: "A" -> "a". normalized=true tokens are matched after it (their content normalized too);
  // normalized=false tokens before it, on the raw text.
  const json normalizer = {{"type", "Replace"}, {"pattern", {{"String", "A"}}}, {"content", "a"}};
  const Tokenizer t = Tokenizer::from_json(char_tokenizer(
      {added(100, "Ab", false, false, false, /*normalized=*/true), added(101, "AZ", false, false, false, false)},
      normalizer));
  EXPECT_EQ(tokens_of(t, "xAbyaby"), (Strings{"x", "Ab", "y", "Ab", "y"}));  // both "Ab" and "ab" normalize to "ab"
  EXPECT_EQ(tokens_of(t, "AZaZ"), (Strings{"AZ", "a", "Z"}));              // raw match only
}

TEST(Bpe, MergesApplyInRankOrder) {
  const json extra = {{"ab", 200}, {"bc", 201}, {"abc", 202}};
  const Tokenizer bc_first = Tokenizer::from_json(char_tokenizer(json::array(), nullptr, {"b c", "a b", "a bc"}, extra));
  EXPECT_EQ(bc_first.encode("abc"), (std::vector<int32_t>{202}));
  EXPECT_EQ(bc_first.encode("ab"), (std::vector<int32_t>{200}));
  // Pair form of merges; "a b" first leaves "ab c", which has no merge.
  const Tokenizer ab_first = Tokenizer::from_json(char_tokenizer(json::array(), nullptr, json::array({json::array({"a", "b"}), json::array({"b", "c"})}), extra));
  EXPECT_EQ(tokens_of(ab_first, "abc"), (Strings{"ab", "c"}));
  // Equal ranks resolve leftmost first: "aaa" with only "a a" -> "aa", "a".
  const Tokenizer aa = Tokenizer::from_json(char_tokenizer(json::array(), nullptr, json::array({"a a"}), {{"aa", 300}}));
  EXPECT_EQ(tokens_of(aa, "aaaaa"), (Strings{"aa", "aa", "a"}));
}

TEST(Bpe, IgnoreMergesUsesWholeWordsFromTheVocab) {
  const json extra = {{"ab", 200}, {"abc", 202}};
  const Tokenizer plain = Tokenizer::from_json(char_tokenizer(json::array(), nullptr, json::array({"a b"}), extra));
  EXPECT_EQ(tokens_of(plain, "abc"), (Strings{"ab", "c"}));
  const Tokenizer ignoring =
      Tokenizer::from_json(char_tokenizer(json::array(), nullptr, json::array({"a b"}), extra, {{"ignore_merges", true}}));
  EXPECT_EQ(tokens_of(ignoring, "abc"), (Strings{"abc"}));
}

TEST(Bpe, UnknownCharactersAreDroppedWithoutUnkAndFusedWithIt) {
  const Tokenizer no_unk = Tokenizer::from_json(char_tokenizer(json::array()));
  EXPECT_EQ(tokens_of(no_unk, "aéb"), (Strings{"a", "b"}));  // HF drops characters it cannot encode
  const Tokenizer unk = Tokenizer::from_json(
      char_tokenizer(json::array(), nullptr, json::array(), {{"<unk>", 400}}, {{"unk_token", "<unk>"}, {"fuse_unk", true}}));
  EXPECT_EQ(tokens_of(unk, "aééb"), (Strings{"a", "<unk>", "b"}));
  const Tokenizer fallback = Tokenizer::from_json(char_tokenizer(
      json::array(), nullptr, json::array(), {{"<0xC3>", 500}, {"<0xA9>", 501}}, {{"byte_fallback", true}}));
  EXPECT_EQ(tokens_of(fallback, "é"), (Strings{"<0xC3>", "<0xA9>"}));
}

TEST(PostProcessor, TemplateProcessingAddsItsTokens) {
  json spec = json::parse(char_tokenizer({added(100, "<s>"), added(101, "</s>")}));
  spec["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                  {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}}}},
      {"pair", json::array()},
      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {100}}, {"tokens", {"<s>"}}}},
                          {"</s>", {{"id", "</s>"}, {"ids", {101}}, {"tokens", {"</s>"}}}}}}};
  const Tokenizer t = Tokenizer::from_json(spec.dump());
  EXPECT_EQ(t.encode("a", true), (std::vector<int32_t>{100, 65, 101}));
  EXPECT_EQ(t.encode("a", false), (std::vector<int32_t>{65}));
}

}  // namespace
}  // namespace moe
