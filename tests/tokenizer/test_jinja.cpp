// The Jinja subset. Expected outputs are what Jinja2 (with transformers' trim_blocks=True, lstrip_blocks=True)
// renders for the same template and variables; each case was checked against Jinja2 3.1.6 with transformers'
// environment (sandboxed, loopcontrols, its tojson and raise_exception).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_depth.h"
#include "tokenizer/jinja.h"

namespace moe::jinja {
namespace {

using json = nlohmann::json;

std::string render(const std::string& source, const json& context = json::object()) {
  return Template(source).render(context);
}

TEST(Jinja, OutputsPythonStyleValues) {
  EXPECT_EQ(render("{{ x }}|{{ n }}|{{ f }}|{{ b }}|{{ z }}|{{ missing }}|{{ l }}|{{ d }}",
                   {{"x", "s"}, {"n", 3}, {"f", 2.0}, {"b", true}, {"z", nullptr}, {"l", {1, "a"}}, {"d", {{"k", "v"}}}}),
            "s|3|2.0|True|None||[1, 'a']|{'k': 'v'}");
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ none }}{{ 7 // 2 }}{{ -7 // 2 }}{{ 7 % 3 }}{{ 2 ** 3 }}{{ 1 / 2 }}"), "a1None3-4180.5");
  EXPECT_EQ(render("{{ 'it\\'s' + \"\\n\" }}"), "it's\n");
}

TEST(Jinja, ConditionsAndTests) {
  const std::string t = "{% if x is none %}none{% elif x is string and x %}str:{{ x }}{% elif x is defined %}other"
                        "{% else %}undef{% endif %}";
  EXPECT_EQ(render(t, {{"x", nullptr}}), "none");
  EXPECT_EQ(render(t, {{"x", "hi"}}), "str:hi");
  EXPECT_EQ(render(t, {{"x", ""}}), "other");
  EXPECT_EQ(render(t), "undef");
  EXPECT_EQ(render("{{ 'b' in 'abc' }}{{ 'k' in d }}{{ 3 not in l }}{{ x is not none }}", {{"d", {{"k", 1}}}, {"l", {1, 2}}, {"x", 1}}),
            "TrueTrueTrueTrue");
  EXPECT_EQ(render("{{ 'yes' if a else 'no' }}{{ a or 'fallback' }}{{ a and 'both' }}", {{"a", 0}}), "nofallback0");
  EXPECT_EQ(render("{{ not x is defined }}"), "True");  // `is` binds tighter than `not`
}

TEST(Jinja, LoopsScopesAndNamespaces) {
  EXPECT_EQ(render("{% for x in l %}{{ loop.index }}{{ x }}{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %}"
                   "{% if not loop.last %},{% endif %}{% endfor %}",
                   {{"l", {"a", "b", "c"}}}),
            "1aF,2b,3cL");
  // A set inside a loop does not leak out of it; a namespace attribute does.
  EXPECT_EQ(render("{% set n = 0 %}{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set n = n + 1 %}"
                   "{% set ns.n = ns.n + i %}{% endfor %}{{ n }}/{{ ns.n }}"),
            "0/3");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {{"d", {{"a", 1}, {"b", 2}}}}), "a=1;b=2;");
  EXPECT_EQ(render("{% for x in l if x > 1 %}{{ x }}{% else %}empty{% endfor %}", {{"l", {1, 2, 3}}}), "23");
  EXPECT_EQ(render("{% for x in l %}{{ x }}{% else %}empty{% endfor %}", {{"l", json::array()}}), "empty");
  EXPECT_EQ(render("{% for x in l %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}"
                   "{% endfor %}",
                   {{"l", {1, 2, 3, 4, 5}}}),
            "13");
  EXPECT_EQ(render("{% set block %}in {{ 1 + 1 }}{% endset %}[{{ block }}]"), "[in 2]");
}

TEST(Jinja, FiltersAndMethods) {
  EXPECT_EQ(render("{{ '  x  ' | trim }}|{{ l | length }}|{{ l | join(', ') }}|{{ l | first }}|{{ l | last }}|"
                   "{{ u | default('d') }}|{{ 'Ab' | upper }}{{ 'Ab' | lower }}|{{ l | reverse | join }}",
                   {{"l", {"a", "b", "c"}}}),
            "x|3|a, b, c|a|c|d|ABab|cba");
  EXPECT_EQ(render("{{ s.split('</think>')[-1] }}|{{ s.split('</think>')[0].strip() }}|{{ s.startswith('<think>') }}|"
                   "{{ s[::-1][:3] }}|{{ s.replace('think', 'T') }}",
                   {{"s", "<think> why </think>answer"}}),
            "answer|<think> why|True|rew|<T> why </T>answer");
  EXPECT_EQ(render("{{ d | tojson }}|{{ d.get('b', 'none') }}|{{ d['a'] }}", {{"d", {{"a", "é\n\"q\""}, {"n", {1, 2.5, nullptr, true}}}}}),
            R"({"a": "é\n\"q\"", "n": [1, 2.5, null, true]}|none|é
"q")");
  EXPECT_EQ(render("{{ d | tojson(indent=2) }}", {{"d", {{"a", {1}}}}}), "{\n  \"a\": [\n    1\n  ]\n}");
  EXPECT_EQ(render("{{ l | selectattr('role', 'equalto', 'user') | map(attribute='c') | join }}",
                   {{"l", {{{"role", "user"}, {"c", "1"}}, {{"role", "bot"}, {"c", "2"}}, {{"role", "user"}, {"c", "3"}}}}}),
            "13");
}

TEST(Jinja, WhitespaceControlLikeTransformers) {
  // trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before a block tag goes.
  EXPECT_EQ(render("{% for x in l %}\n    {% if x %}\n  {{ x }}\n    {% endif %}\n{% endfor %}\n", {{"l", {1, 2}}}),
            "  1\n  2\n");
  EXPECT_EQ(render("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  EXPECT_EQ(render("a\n  {{- 'b' }}\n{# comment #}\nc"), "ab\nc");
  EXPECT_EQ(render("  {%+ if true %}x{% endif %}"), "  x");
  EXPECT_EQ(render("{% raw %}{{ not evaluated }}{% endraw %}"), "{{ not evaluated }}");
}

// What a template may build in one render is bounded (jinja_builtins.h), each with an error naming the limit.
TEST(Jinja, RunawayTemplatesFailWithTheLimitNamed) {
  const auto expect_error = [](const std::string& source, const std::string& needle) {
    try {
      render(source);
      ADD_FAILURE() << source << ": rendered";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("{{ range(10 ** 9) | length }}", "range() of more than 100000 items");
  EXPECT_EQ(render("{{ range(100000) | length }}{{ range(-5, 5, 3) | list }}{{ range(5, -5, -4) | list }}"),
            "100000[-5, -2, 1, 4][5, 1, -3]");
  expect_error("{{ 'ab' * 10 ** 9 }}", "'*' would make a string of 2000000000 bytes");
  expect_error("{% set s = namespace(v='x') %}{% for i in range(40) %}{% set s.v = s.v ~ s.v %}{% endfor %}", "'~'");
  expect_error("{% for i in range(100000) %}{% for j in range(100) %}{% endfor %}{% endfor %}",
               "more than 1000000 loop iterations");
  expect_error("{{ range(100000) | map('string') | unique | length }}", "unique() needs more than");
  expect_error("{% for c in 'ab' * 600000 %}{% endfor %}", "iterating over a string of more than 1000000 characters");
  EXPECT_EQ(render("{{ ('aé' * 600000)[::-1][:3] }}|{{ ('aé' * 600000)[-1] }}|{{ 'héllo'[1] }}{{ 'héllo'[-4:3] }}"),
            "éaé|é|éél");
  // A namespace holding itself would never be freed nor finish printing (fuzz_chat_template found the leak).
  expect_error("{% set ns = namespace(n=0) %}{% set ns.n = ns %}", "a namespace cannot contain itself (set ns.n)");
  expect_error("{% set ns = namespace(n=0) %}{% set ns.n = [1, {'a': [ns]}] %}", "cannot contain itself");
  EXPECT_EQ(render("{% set a = namespace(x=1) %}{% set b = namespace(y=a) %}{% set a.x = 2 %}{{ b.y.x }}"), "2");
  expect_error("{{ 2 ** 64 }}", "integer overflow");
  expect_error("{{ 9223372036854775807 + 1 }}", "integer overflow");
  expect_error("{{ -(-9223372036854775807 - 1) }}", "integer overflow");
  expect_error("{{ (-9223372036854775807 - 1) // -1 }}", "integer overflow");
  EXPECT_EQ(render("{{ 2 ** 62 }}|{{ (-2) ** 63 }}|{{ 7 ** 0 }}|{{ (-9223372036854775807 - 1) % -1 }}"),
            "4611686018427387904|-9223372036854775808|1|0");
  expect_error("{{ {'a': 1} | tojson(indent=100000) }}", "tojson indent must be between 0 and 1000");
  expect_error("{{ 'a\nb' | indent(100000000) }}", "indent would make a string");
}

TEST(Jinja, ErrorsAreClear) {
  EXPECT_THROW(render("{{ raise_exception('Only user and assistant roles') }}"), Error);
  EXPECT_THROW(render("{% if x %}unclosed"), Error);
  EXPECT_THROW(render("{{ x "), Error);
  EXPECT_THROW(render("{% macro m() %}{% endmacro %}"), Error);
  EXPECT_THROW(render("{{ 'a' + 1 }}"), Error);
  EXPECT_THROW(render("{{ missing.attr }}"), Error);
  EXPECT_THROW(render("{{ x | no_such_filter }}", {{"x", 1}}), Error);
  EXPECT_THROW(render("{{ [1] | map(zattribute='x') }}"), Error);  // neither a filter name nor attribute= (fuzzer)
  EXPECT_THROW(render("{{ 'abc'[] }}"), Error);                     // an empty subscript (fuzzer)
  EXPECT_EQ(render("{{ 'abc'[1:9223372036854775807:9223372036854775807] }}{{ 'abc'[::-9223372036854775807] }}"), "bc");
  EXPECT_EQ(render("{{ 'abc'[:] }}{{ 'abc'[::2] }}"), "abcac");
  EXPECT_THROW(render("{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}"), Error);
  EXPECT_THROW(render("{{ " + std::string(100000, '-') + "1 }}"), Error);
  std::string deep_ifs;
  for (int i = 0; i < 100000; ++i) deep_ifs += "{% if true %}";
  EXPECT_THROW(render(deep_ifs), Error);
  try {
    render("{{ raise_exception('Only user and assistant roles') }}");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Only user and assistant roles"), std::string::npos);
  }
}

// JSON nests arrays `levels` deep: [[[...]]] built without recursion (a deep json is destroyed iteratively).
json nested(size_t levels) {
  json j = json::array();
  for (size_t i = 1; i < levels; ++i) j = json::array({std::move(j)});
  return j;
}

TEST(Jinja, JsonDeeperThanTheLimitIsRefusedBeforeRecursing) {
  // 128 levels convert; one more fails with the limit named, and so does a depth that would overflow the stack
  // if the conversion recursed into it (no copy of it is made here: from_json reads it in place).
  EXPECT_EQ(render("{{ x | length }}", {{"x", nested(kMaxJsonDepth)}}), "1");
  for (size_t levels : {kMaxJsonDepth + 1, size_t(100000)}) {
    json ctx = json::object();
    ctx["x"] = nested(levels);
    try {
      (void)Template("{{ x }}").render(ctx);
      ADD_FAILURE() << levels << " levels converted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("nesting deeper than 128 levels"), std::string::npos) << e.what();
    }
    EXPECT_THROW(Value::from_json(ctx["x"]), Error);
  }
}

TEST(Jinja, JsonNestingDepthOfRawText) {
  EXPECT_EQ(json_nesting_depth("{}"), 1u);
  EXPECT_EQ(json_nesting_depth(R"({"a": [1, {"b": "[[[["}], "c": "\"{"})"), 3u);  // brackets in strings ignored
  EXPECT_EQ(json_nesting_depth("5"), 0u);
  EXPECT_EQ(json_nesting_depth(std::string(1000000, '['), 128), 129u);  // stops past the limit
  EXPECT_EQ(json_nesting_depth(std::string(128, '[') + std::string(128, ']')), 128u);
}

}  // namespace
}  // namespace moe::jinja
