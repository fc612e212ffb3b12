// The schema compiler and byte matcher against independent checks: hand-written accept/reject tables, and random
// walks through the automaton whose every finished text must parse (nlohmann::json) and validate (the small
// validator in grammar_validator.h), with no walk ever reaching a dead end.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "engine/grammar/matcher.h"
#include "grammar_validator.h"

namespace moe::grammar {
namespace {

using nlohmann::json;

Matcher matcher_for(const json& schema, bool strict = true) {
  return Matcher({Piece::value(Schema::compile(schema, SchemaOptions{.strict = strict}))});
}

// Whether `text` is a complete match (and, separately, a viable prefix).
bool accepts(const Matcher& m, const std::string& text) {
  State s = m.initial();
  return m.step_bytes(s, text) && m.can_end(s);
}
bool viable(const Matcher& m, const std::string& text) {
  State s = m.initial();
  return m.step_bytes(s, text);
}

const json kPerson = json::parse(R"({
  "type": "object",
  "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "email": {"type": ["string", "null"]},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c\"d"]}, "minItems": 1, "maxItems": 2},
    "ok": {"type": "boolean"},
    "score": {"type": "number"}
  },
  "required": ["name", "age"],
  "additionalProperties": false
})");

TEST(GrammarSchema, ObjectsAcceptAndReject) {
  const Matcher m = matcher_for(kPerson);
  // accepted: required first or last, optional ones in any order
  for (const char* ok : {R"({"name":"Ann","age":3})", R"({"age":3,"name":"Ann"})",
                         R"({"ok":true,"age":150,"name":"\u00e9\n","tags":["c\"d","a"]})",
                         R"({"name":"日本語","age":0,"email":null,"score":-1.5e+3})",
                         R"({"name":"12345678","age":42,"email":"x"})"}) {
    EXPECT_TRUE(accepts(m, ok)) << ok;
    const json v = json::parse(ok);
    EXPECT_TRUE(test::validate(v, kPerson, kPerson)) << ok;  // the table itself is right
  }
  for (const char* bad : {
           R"({"name":"Ann"})",                      // age missing
           R"({"name":"","age":3})",                 // minLength
           R"({"name":"123456789","age":3})",        // maxLength
           R"({"name":"A","age":151})",              // maximum
           R"({"name":"A","age":-1})",               // minimum
           R"({"name":"A","age":3,"age":4})",        // a property twice
           R"({"name":"A","age":3,"x":1})",          // undeclared
           R"({"name":"A","age":3,"tags":[]})",      // minItems
           R"({"name":"A","age":3,"tags":["a","b","c\"d"]})",  // maxItems
           R"({"name":"A","age":3,"tags":["d"]})",   // enum
           R"({"name":"A","age":03})",               // leading zero
           R"({"name":"A", "age":3})",               // whitespace is not generated
           R"({"name":"\ud800","age":3})",           // surrogate escape
           "{\"name\":\"a\x01\",\"age\":3}",         // control byte
           "{\"name\":\"\xc0\xaf\",\"age\":3}",      // overlong UTF-8
           R"({"name":"A","age":3,})",               // trailing comma
       }) {
    EXPECT_FALSE(accepts(m, bad)) << bad;
  }
  EXPECT_TRUE(viable(m, R"({"name":"A","ag)"));
  EXPECT_FALSE(viable(m, R"({"name":"A","name)"));
  EXPECT_FALSE(viable(m, R"({"nam_)"));
}

TEST(GrammarSchema, IntegerBoundsPruneImpossiblePrefixes) {
  const Matcher m = matcher_for(json{{"type", "integer"}, {"minimum", 10}, {"maximum", 25}});
  EXPECT_TRUE(viable(m, "1"));   // 10..19
  EXPECT_TRUE(viable(m, "2"));   // 20..25
  EXPECT_FALSE(viable(m, "3"));  // 3, 30.. are all out of range
  EXPECT_FALSE(viable(m, "26"));
  EXPECT_FALSE(viable(m, "-"));
  EXPECT_TRUE(accepts(m, "25"));
  EXPECT_FALSE(accepts(m, "1"));  // a viable prefix, not a value in range
  const Matcher neg = matcher_for(json{{"type", "integer"}, {"exclusiveMaximum", -3}});
  EXPECT_TRUE(accepts(neg, "-4"));
  EXPECT_FALSE(accepts(neg, "-3"));
  EXPECT_FALSE(viable(neg, "0"));
  EXPECT_FALSE(viable(neg, "-0"));
}

TEST(GrammarSchema, RefsAnyOfAndRecursion) {
  const json tree = json::parse(R"({
    "$defs": {"node": {"type": "object", "properties": {
        "v": {"anyOf": [{"type": "integer"}, {"const": "leaf"}]},
        "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
      "required": ["v"], "additionalProperties": false}},
    "$ref": "#/$defs/node"})");
  const Matcher m = matcher_for(tree);
  EXPECT_TRUE(accepts(m, R"({"v":1,"kids":[{"v":"leaf"},{"kids":[],"v":-2}]})"));
  EXPECT_FALSE(accepts(m, R"({"v":"lea"})"));
  EXPECT_FALSE(accepts(m, R"({"v":1,"kids":[{}]})"));
  // Depth is bounded: nesting beyond max_depth frames is cut off.
  const Matcher shallow({Piece::value(Schema::compile(tree))}, 4);
  EXPECT_TRUE(accepts(shallow, R"({"v":1,"kids":[{"v":2}]})"));
  EXPECT_FALSE(viable(shallow, R"({"v":1,"kids":[{"v":2,"kids":[{)"));
}

// Values that cannot finish are never started: a required endless nesting is refused at compile time, an
// optional one is never offered, and near the depth bound only what still fits is.
TEST(GrammarSchema, NoDeadEndsFromEndlessOrTooDeepValues) {
  const json endless = json::parse(R"({"type":"object","properties":{"x":{"$ref":"#"}},"required":["x"]})");
  EXPECT_THROW(Schema::compile(endless), Error);
  const json optional = json::parse(R"({"$defs":{"e":{"type":"object","properties":{"x":{"$ref":"#/$defs/e"}},
      "required":["x"]}},"type":"object","properties":{"bad":{"$ref":"#/$defs/e"},"y":{"type":"integer"}}})");
  const Matcher m = matcher_for(optional);
  EXPECT_FALSE(viable(m, R"({"b)"));
  EXPECT_TRUE(accepts(m, R"({"y":1})"));
  const json lists = json::parse(R"({"$defs":{"l":{"type":"array","items":{"$ref":"#/$defs/l"}}},"$ref":"#/$defs/l"})");
  for (uint32_t depth : {1u, 2u, 5u}) {
    const Matcher d({Piece::value(Schema::compile(lists))}, depth);
    const std::string deepest = std::string(depth, '[') + std::string(depth, ']');
    EXPECT_TRUE(accepts(d, deepest)) << depth;
    EXPECT_FALSE(viable(d, std::string(depth + 1, '['))) << depth;
    // A random walk never gets stuck: every prefix it reaches can be finished.
    std::mt19937 rng(depth);
    for (int sample = 0; sample < 50; ++sample) {
      State s = d.initial(), next;
      for (int step = 0; step < 40 && !d.must_end(s); ++step) {
        std::vector<State> options;
        for (int b = 0; b < 256; ++b)
          if (d.step(s, uint8_t(b), next)) options.push_back(next);
        ASSERT_TRUE(!options.empty() || d.can_end(s));
        if (options.empty()) break;
        s = options[std::uniform_int_distribution<size_t>(0, options.size() - 1)(rng)];
      }
    }
  }
}

TEST(GrammarSchema, FreeObjectsAndValues) {
  const Matcher any = Matcher({Piece::value(Schema::any_object())});
  EXPECT_TRUE(accepts(any, R"({"a":[1,{"b":null}],"c":"d\"","":{}})"));
  EXPECT_TRUE(accepts(any, R"({})"));
  EXPECT_FALSE(accepts(any, R"([1])"));
  EXPECT_FALSE(accepts(any, R"("x")"));
  // strict: an object without properties and without additionalProperties is the empty object
  EXPECT_TRUE(accepts(matcher_for(json{{"type", "object"}}), "{}"));
  EXPECT_FALSE(viable(matcher_for(json{{"type", "object"}}), "{\""));
  EXPECT_TRUE(accepts(matcher_for(json{{"type", "object"}}, false), R"({"k":1})"));
  const Matcher dict = matcher_for(json::parse(R"({"type":"object","additionalProperties":{"type":"integer"}})"));
  EXPECT_TRUE(accepts(dict, R"({"x":1,"y":2})"));
  EXPECT_FALSE(accepts(dict, R"({"x":"1"})"));
}

TEST(GrammarSchema, PiecesAroundAValue) {
  // tokens 7 and 9 stand for special tokens: only token steps pass them
  const Matcher m({Piece::token_id(7), Piece::bytes("fn\n```json\n"),
                   Piece::value(Schema::compile(json{{"type", "integer"}})), Piece::bytes("\n```"), Piece::token_id(9)});
  State s = m.initial(), t;
  EXPECT_FALSE(m.step(s, 'f', t));
  ASSERT_TRUE(m.step_token(s, 7, t));
  s = t;
  ASSERT_TRUE(m.step_bytes(s, "fn\n```json\n12\n```"));
  std::vector<int32_t> ids;
  m.expected_tokens(s, ids);
  EXPECT_EQ(ids, std::vector<int32_t>{9});
  ASSERT_TRUE(m.step_token(s, 9, t));
  EXPECT_TRUE(m.must_end(t));
}

TEST(GrammarSchema, RefusesWhatItDoesNotSupportNamingKeywordAndPlace) {
  auto error_of = [](const std::string& schema) {
    try {
      Schema::compile(json::parse(schema));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto expect_error = [&](const std::string& schema, std::initializer_list<const char*> parts) {
    const std::string e = error_of(schema);
    for (const char* p : parts) EXPECT_NE(e.find(p), std::string::npos) << schema << " -> " << e;
  };
  expect_error(R"({"type":"object","properties":{"d":{"type":"string","pattern":"^a"}}})",
               {"'pattern'", "#/properties/d"});
  expect_error(R"({"type":"string","format":"email"})", {"'format'", "#"});
  expect_error(R"({"oneOf":[{"type":"string"}]})", {"'oneOf'"});
  expect_error(R"({"type":"number","minimum":1e20})", {"minimum", "no number", "15 significant"});
  expect_error(R"({"type":"number","exclusiveMinimum":0,"exclusiveMaximum":1e-16})", {"exclusiveMinimum", "no number"});
  expect_error(R"({"type":"number","minimum":"0"})", {"'minimum'", "must be a number"});
  expect_error(R"({"type":"strin"})", {"'type'", "strin"});
  expect_error(R"({"$ref":"#/$defs/missing"})", {"#/$defs/missing", "does not resolve"});
  expect_error(R"({"$ref":"http://x/y.json"})", {"only references within"});
  expect_error(R"({"$defs":{"a":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"})", {"refers to itself"});
  expect_error(R"({"type":"object","properties":{},"required":["x"]})", {"'required'", "'x'"});
  expect_error(R"({"type":"string","minLength":3,"maxLength":2})", {"minLength", "maxLength"});
  expect_error(R"({"type":"array","items":[{"type":"string"}]})", {"'items'", "tuple"});
  expect_error(R"({"enum":[]})", {"'enum'"});
  expect_error(R"({"type":"integer","enum":["a"]})", {"'enum'", "'type'"});
  expect_error(R"({"type":"integer","minimum":5,"maximum":4})", {"no integer"});
  expect_error(R"({"allOf":[{"type":"string"},{"minLength":1}]})", {"'allOf'"});
  expect_error(R"(false)", {"false"});
  expect_error(R"(3)", {"must be an object"});
}

// Random walks: choose uniformly among the bytes the matcher takes (or stop where the value may end).
TEST(GrammarSchema, RandomWalksParseAndValidateWithoutDeadEnds) {
  const json schemas[] = {
      kPerson,
      json::parse(R"({"type":"object","properties":{"items":{"type":"array","items":{"type":"object",
        "properties":{"id":{"type":"integer","minimum":-5,"maximum":1000},"n":{"type":"number"},
        "s":{"type":"string","maxLength":3}},"required":["id","s"],"additionalProperties":false},"maxItems":3},
        "mode":{"anyOf":[{"const":"fast"},{"type":"null"},{"type":"integer","minimum":7,"maximum":7}]}},
        "required":["items","mode"],"additionalProperties":false})"),
      json::parse(R"({"type":"object","additionalProperties":true})"),
  };
  std::mt19937 rng(1234);
  for (const json& schema : schemas) {
    const Matcher m = matcher_for(schema, false);
    for (int sample = 0; sample < 200; ++sample) {
      State s = m.initial(), next;
      std::string text;
      for (int step = 0;; ++step) {
        std::vector<std::pair<uint8_t, State>> options;
        for (int b = 0; b < 256; ++b)
          if (m.step(s, uint8_t(b), next)) options.emplace_back(uint8_t(b), next);
        const bool can_end = m.can_end(s);
        ASSERT_TRUE(can_end || !options.empty()) << "dead end after " << text;
        // Prefer structure over long strings: end when possible with rising probability.
        if (can_end && (options.empty() || std::uniform_int_distribution<int>(0, 40)(rng) < step / 8)) break;
        if (options.empty()) break;
        // Bias towards closing characters as the text grows, so walks finish.
        size_t pick = std::uniform_int_distribution<size_t>(0, options.size() - 1)(rng);
        if (step > 60) {
          for (const char closer : {'}', ']', '"'})
            for (size_t i = 0; i < options.size(); ++i)
              if (options[i].first == uint8_t(closer)) pick = i;
        }
        text += char(options[pick].first);
        s = std::move(options[pick].second);
        ASSERT_LT(step, 5000) << text.substr(0, 200);
      }
      json v;
      ASSERT_NO_THROW(v = json::parse(text)) << text;
      EXPECT_TRUE(test::validate(v, schema, schema)) << text;
    }
  }
}

}  // namespace
}  // namespace moe::grammar
