// Token masks against brute force on the DeepSeek-V3 tokenizer (models/deepseek-v3-tokenizer, 129k tokens): at
// states along a valid document, a token is allowed exactly when its bytes, fed to the matcher one by one, are
// taken (every allowed token really extends a valid prefix; no valid continuation is masked), and the tokens
// the tokenizer itself produces for the document are allowed at every step.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "engine/grammar/constraint.h"
#include "tokenizer/tokenizer.h"

namespace moe::grammar {
namespace {

using nlohmann::json;

struct Vocab {
  Tokenizer tokenizer = Tokenizer::load("models/deepseek-v3-tokenizer");
  std::shared_ptr<const Vocabulary> vocab = Vocabulary::build(tokenizer);
};
const Vocab& vocab() {
  static Vocab v;
  return v;
}

const json kSchema = json::parse(R"({
  "type": "object",
  "properties": {
    "city": {"type": "string", "maxLength": 12},
    "unit": {"enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 14},
    "hourly": {"type": "boolean"},
    "note": {"type": ["string", "null"], "maxLength": 3}
  },
  "required": ["city", "unit"],
  "additionalProperties": false
})");

// Brute force: every token of the vocabulary fed byte by byte to the matcher.
std::vector<bool> brute_force(const GrammarConstraint& c, const Vocabulary& v, std::optional<int32_t> eos) {
  std::vector<bool> out(size_t(v.size()), false);
  const Matcher& m = c.matcher();
  State next;
  for (int32_t id = 0; id < v.size(); ++id) {
    if (m.step_token(c.state(), id, next)) out[size_t(id)] = true;
    if (eos && id == *eos && m.can_end(c.state())) out[size_t(id)] = true;
    if (v.excluded(id)) continue;
    State s = c.state();
    if (m.step_bytes(s, v.bytes(id))) out[size_t(id)] = true;
  }
  return out;
}

void expect_matches_brute_force(GrammarConstraint& c, const Vocabulary& v, std::optional<int32_t> eos,
                                const std::string& where) {
  const std::vector<bool> expected = brute_force(c, v, eos);
  size_t allowed = 0, mismatches = 0;
  for (int32_t id = 0; id < v.size(); ++id) {
    allowed += expected[size_t(id)];
    if (c.allows(id) != expected[size_t(id)] && ++mismatches <= 5)
      ADD_FAILURE() << where << ": token " << id << " '" << v.bytes(id) << "' mask " << c.allows(id)
                    << " brute force " << expected[size_t(id)];
  }
  EXPECT_GT(allowed, 0u) << where;
}

TEST(GrammarMask, MatchesBruteForceAlongADocumentOnDeepSeekV3) {
  const auto& [tokenizer, v] = vocab();
  ASSERT_GT(v->size(), 128000);
  const std::string doc = R"({"unit":"celsius","city":"Zürich \"N\"","note":null,"days":12})";
  const std::vector<int32_t> ids = tokenizer.encode(doc);
  GrammarConstraint c(v, {Piece::value(Schema::compile(kSchema))}, tokenizer.eos_id());
  std::string text;
  for (size_t i = 0; i < ids.size(); ++i) {
    // brute force at every other position (each costs a pass over the vocabulary)
    if (i % 2 == 0 || i + 1 == ids.size()) expect_matches_brute_force(c, *v, tokenizer.eos_id(), "after '" + text + "'");
    ASSERT_TRUE(c.allows(ids[i])) << "the tokenizer's own token " << ids[i] << " after '" << text << "'";
    c.accept(ids[i]);
    text += v->bytes(ids[i]);
    EXPECT_EQ(c.complete(), i + 1 == ids.size());
  }
  EXPECT_EQ(text, doc);
}

}  // namespace
}  // namespace moe::grammar
