// Bounds on numbers and integers (engine/grammar/number_bounds.h) against independent checks: accept/reject
// tables, and seeded random schemas whose random walks must end on values that parse and satisfy the bounds, both
// as doubles (what Ajv and grammar_validator.h compare) and exactly as decimals against the bound as written in the
// schema (a scaled-integer comparison written here, apart from the engine's).
#include <gtest/gtest.h>

#include <iostream>
#include <random>
#include <string>

#include "core/error.h"
#include "engine/grammar/matcher.h"
#include "grammar_validator.h"

namespace moe::grammar {
namespace {

using nlohmann::json;

Matcher matcher_for(const json& schema) { return Matcher({Piece::value(Schema::compile(schema))}); }

bool accepts(const Matcher& m, const std::string& text) {
  State s = m.initial();
  return m.step_bytes(s, text) && m.can_end(s);
}
bool viable(const Matcher& m, const std::string& text) {
  State s = m.initial();
  return m.step_bytes(s, text);
}

TEST(GrammarNumbers, BoundsAcceptAndReject) {
  const Matcher m = matcher_for(json::parse(R"({"type":"number","minimum":0.5,"maximum":3.25})"));
  for (const char* ok : {"0.5", "3.25", "1", "2.999", "3", "0.50", "3.250000000000"}) EXPECT_TRUE(accepts(m, ok)) << ok;
  for (const char* bad : {"0.49", "3.26", "-1", "0", "4", "3.2500000000001", "1e0", "0.5e1"})
    EXPECT_FALSE(accepts(m, bad)) << bad;
  EXPECT_FALSE(viable(m, "0.4"));  // no completion of 0.4 reaches 0.5
  EXPECT_FALSE(viable(m, "3.3"));
  EXPECT_FALSE(viable(m, "-"));
  EXPECT_FALSE(viable(m, "10"));  // any longer integer part is above 3.25
  EXPECT_TRUE(viable(m, "0."));

  const Matcher pos = matcher_for(json::parse(R"({"type":"number","exclusiveMinimum":0})"));
  EXPECT_FALSE(accepts(pos, "0"));
  EXPECT_FALSE(accepts(pos, "-0"));
  EXPECT_FALSE(accepts(pos, "0.000"));
  EXPECT_TRUE(viable(pos, "0.000"));
  EXPECT_TRUE(accepts(pos, "0.000000000000001"));  // 15 decimals, the finest
  EXPECT_FALSE(viable(pos, "0.0000000000000000"));  // a 16th decimal is never written
  EXPECT_TRUE(accepts(pos, "123456789012345"));  // 15 significant digits
  EXPECT_FALSE(viable(pos, "1234567890123456"));

  // 0.1 is not a double: the bound is its shortest decimal, so 0.1 itself is out and the next 15-digit value in.
  const Matcher tenth = matcher_for(json::parse(R"({"type":"number","exclusiveMinimum":0.1,"exclusiveMaximum":0.3})"));
  EXPECT_FALSE(accepts(tenth, "0.1"));
  EXPECT_TRUE(accepts(tenth, "0.100000000000001"));
  EXPECT_FALSE(accepts(tenth, "0.3"));
  EXPECT_TRUE(accepts(tenth, "0.299999999999999"));
  EXPECT_TRUE(accepts(tenth, "0.2"));

  // Negative ranges, bounds given as integers, several bounds at once (the tightest wins).
  const Matcher neg = matcher_for(json::parse(R"({"type":"number","minimum":-7,"exclusiveMinimum":-7.5,
                                                    "maximum":-2,"exclusiveMaximum":-2.5})"));
  for (const char* ok : {"-7", "-2.6", "-3", "-6.999"}) EXPECT_TRUE(accepts(neg, ok)) << ok;
  for (const char* bad : {"-7.1", "-2.5", "-2", "2", "-0"}) EXPECT_FALSE(accepts(neg, bad)) << bad;

  // No type: the bounds make it a number. Integers take the same exact reading of the bounds.
  EXPECT_TRUE(accepts(matcher_for(json::parse(R"({"minimum":1.5})")), "1.75"));
  const Matcher big = matcher_for(json::parse(R"({"type":"integer","minimum":9007199254740993})"));
  EXPECT_FALSE(accepts(big, "9007199254740992"));  // the bound is not a double: read exactly, not rounded to one
  EXPECT_TRUE(accepts(big, "9007199254740993"));
  const Matcher half = matcher_for(json::parse(R"({"type":"integer","exclusiveMinimum":-2.5,"maximum":1e1})"));
  for (const char* ok : {"-2", "0", "10"}) EXPECT_TRUE(accepts(half, ok)) << ok;
  for (const char* bad : {"-3", "11", "1.0"}) EXPECT_FALSE(accepts(half, bad)) << bad;
}

TEST(GrammarNumbers, ScaledBoundsAreExact) {
  EXPECT_EQ(scaled_bound(json(0.1), 15, false), Wide(100000000000000));
  EXPECT_EQ(scaled_bound(json(0.1), 0, true), Wide(1));
  EXPECT_EQ(scaled_bound(json(-0.1), 0, true), Wide(0));
  EXPECT_EQ(scaled_bound(json(-0.1), 0, false), Wide(-1));
  EXPECT_EQ(scaled_bound(json(-2.5), 0, true), Wide(-2));
  EXPECT_EQ(scaled_bound(json(1e-300), 15, true), Wide(1));
  EXPECT_EQ(scaled_bound(json(1e-300), 15, false), Wide(0));
  EXPECT_EQ(scaled_bound(json(uint64_t(18446744073709551615ull)), 0, false), Wide(uint64_t(18446744073709551615ull)));
  EXPECT_EQ(scaled_bound(json(int64_t(-9223372036854775807ll - 1)), 0, false), Wide(int64_t(-9223372036854775807ll - 1)));
  Wide big = 1;
  for (int i = 0; i < 32; ++i) big *= 10;
  EXPECT_EQ(scaled_bound(json(1e300), 15, false), big);  // clamped beyond every generated value
  EXPECT_EQ(scaled_bound(json(-1e300), 15, true), -big);
  EXPECT_THROW(scaled_bound(json("1"), 15, true), Error);
}

// value * 10^20 of a plain decimal text ("-12.5", "3", "0.001", "1e-3", "2.5e+2"), exactly, for |value| < 10^15.
Wide scaled20(const std::string& text) {
  bool negative = false;
  Wide m = 0;
  int exp = 0;
  size_t i = 0;
  if (text[i] == '-') negative = true, ++i;
  bool point = false;
  for (; i < text.size() && text[i] != 'e' && text[i] != 'E'; ++i) {
    if (text[i] == '.') {
      point = true;
      continue;
    }
    m = m * 10 + (text[i] - '0');
    if (point) --exp;
  }
  if (i < text.size()) exp += std::stoi(text.substr(i + 1));
  for (exp += 20; exp > 0; --exp) m *= 10;
  for (; exp < 0; ++exp) {
    EXPECT_EQ(m % 10, 0) << "the test's decimals stay within 20 places: " << text;
    m /= 10;
  }
  return negative ? -m : m;
}

// A random bound written as text: up to 6 significant digits, from 10^-6 to 10^5, sometimes a JSON integer.
std::string random_bound(std::mt19937& rng) {
  const int digits = std::uniform_int_distribution<int>(1, 6)(rng);
  std::string m;
  for (int i = 0; i < digits; ++i) m += char('0' + std::uniform_int_distribution<int>(i == 0 ? 1 : 0, 9)(rng));
  const bool negative = std::uniform_int_distribution<int>(0, 2)(rng) == 0;
  const int point = std::uniform_int_distribution<int>(-5, digits)(rng);  // digits before the point
  std::string t;
  if (point >= digits) t = m;                                    // an integer
  else if (point > 0) t = m.substr(0, size_t(point)) + "." + m.substr(size_t(point));
  else t = "0." + std::string(size_t(-point), '0') + m;
  if (std::uniform_int_distribution<int>(0, 4)(rng) == 0 && t.find('.') != std::string::npos)
    t = m + "e" + std::to_string(point - digits);  // the same value in exponent form
  return (negative ? "-" : "") + t;
}

// 50 seeded schemas with random bounds (numbers and integers, alone, in arrays and in objects); 40 random walks
// each. Every walk ends (no dead end) on JSON that parses, validates as doubles, and satisfies the bounds exactly.
TEST(GrammarNumbers, RandomBoundedSchemasGenerateOnlyValuesWithinThem) {
  std::mt19937 rng(20261202);
  const char* kKeys[] = {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"};
  int compiled = 0;
  for (int schema_i = 0; schema_i < 50; ++schema_i) {
    const bool integer = schema_i % 3 == 0;
    // Two bounds, ordered; each side as inclusive, exclusive, both or absent (but one side at least).
    std::string a = random_bound(rng), b = random_bound(rng);
    if (scaled20(a) > scaled20(b)) std::swap(a, b);
    if (scaled20(a) == scaled20(b)) b = "100001";
    const int lower = std::uniform_int_distribution<int>(0, 3)(rng), upper = std::uniform_int_distribution<int>(0, 3)(rng);
    std::string bounds;
    std::vector<std::pair<std::string, std::string>> used;  // keyword, bound text
    auto add = [&](const char* key, const std::string& v) {
      bounds += std::string(",\"") + key + "\":" + v;
      used.emplace_back(key, v);
    };
    if (lower == 0 || lower == 2 || (lower == 3 && upper == 3)) add(kKeys[0], a);
    if (lower == 1 || lower == 2) add(kKeys[1], a);
    if (upper == 0 || upper == 2) add(kKeys[2], b);
    if (upper == 1 || upper == 2) add(kKeys[3], b);
    const std::string inner = std::string(R"({"type":")") + (integer ? "integer" : "number") + "\"" + bounds + "}";
    const int shape = schema_i % 5;
    const std::string text = shape == 3   ? R"({"type":"array","items":)" + inner + R"(,"minItems":1,"maxItems":3})"
                             : shape == 4 ? R"({"type":"object","properties":{"x":)" + inner +
                                                R"(},"required":["x"],"additionalProperties":false})"
                                          : inner;
    const json schema = json::parse(text);
    std::unique_ptr<Matcher> m;
    try {
      m = std::make_unique<Matcher>(std::vector<Piece>{Piece::value(Schema::compile(schema))});
    } catch (const Error& e) {
      // Refused only when no value of the generated form fits: integers between two close decimals.
      EXPECT_TRUE(integer) << text << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find("no integer"), std::string::npos) << e.what();
      continue;
    }
    ++compiled;
    auto satisfies = [&](const json& v, const std::string& num) {
      if (integer && !v.is_number_integer()) return false;
      const Wide x = scaled20(num);
      for (const auto& [key, bound] : used) {
        const Wide y = scaled20(bound);
        if ((key == kKeys[0] && x < y) || (key == kKeys[1] && x <= y) || (key == kKeys[2] && x > y) ||
            (key == kKeys[3] && x >= y))
          return false;
      }
      return true;
    };
    for (int sample = 0; sample < 40; ++sample) {
      State s = m->initial(), next;
      std::string out;
      for (int step = 0;; ++step) {
        std::vector<std::pair<uint8_t, State>> options;
        for (int c = 0; c < 256; ++c)
          if (m->step(s, uint8_t(c), next)) options.emplace_back(uint8_t(c), next);
        const bool can_end = m->can_end(s);
        ASSERT_TRUE(can_end || !options.empty()) << "dead end after " << out << " in " << text;
        if (can_end && (options.empty() || std::uniform_int_distribution<int>(0, 9)(rng) < 3)) break;
        const size_t pick = std::uniform_int_distribution<size_t>(0, options.size() - 1)(rng);
        out += char(options[pick].first);
        s = std::move(options[pick].second);
        ASSERT_LT(step, 200) << out;
      }
      json v;
      ASSERT_NO_THROW(v = json::parse(out)) << out;
      EXPECT_TRUE(test::validate(v, schema, schema)) << out << " against " << text;
      // The numbers in the output: the whole text, the array's items, or x.
      std::vector<std::pair<json, std::string>> nums;
      if (shape == 3) {
        const std::string body = out.substr(1, out.size() - 2);
        size_t start = 0;
        for (const auto& item : v) {
          const size_t comma = body.find(',', start);
          nums.emplace_back(item, body.substr(start, comma - start));
          start = comma == std::string::npos ? body.size() : comma + 1;
        }
      } else if (shape == 4) {
        nums.emplace_back(v["x"], out.substr(5, out.size() - 6));  // {"x":NUM}
      } else {
        nums.emplace_back(v, out);
      }
      for (const auto& [value, num] : nums) EXPECT_TRUE(satisfies(value, num)) << num << " against " << text;
      if (sample == 0 && schema_i % 10 == 0) std::cout << text << "  ->  " << out << "\n";
    }
  }
  std::cout << compiled << " of 50 schemas compiled\n";
  EXPECT_GE(compiled, 40);  // the refusals are the rare integer-free ranges
}

}  // namespace
}  // namespace moe::grammar
