// Tool calls: the DeepSeek markup parser (streamed in every split, against the whole-text parse and a hand-written
// expectation), the forced-call constraint (its JSON automaton against nlohmann's parser, and the token masks), and
// the request side (tools, tool_choice, strict fields, logit_bias).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "engine/sampler.h"
#include "server/api.h"
#include "server/tool_call_parser.h"
#include "server/tool_constraint.h"
#include "server/tools.h"
#include "core/error.h"

namespace moe::server {
namespace {

using nlohmann::json;

const std::string B(kToolCallsBegin), E(kToolCallsEnd), CB(kToolCallBegin), CE(kToolCallEnd), SEP(kToolSep);

struct Parsed {
  std::string content;
  std::vector<ToolCall> calls;  // assembled from the deltas, as a streaming client does
};

Parsed parse_in_pieces(ToolCallFormat f, const std::string& text, const std::vector<size_t>& cuts) {
  ToolCallParser p(f, "call_");
  Parsed out;
  auto take = [&](const ToolCallParser::Out& o) {
    out.content += o.content;
    for (const auto& d : o.calls) {
      if (!d.id.empty()) {
        EXPECT_EQ(size_t(d.index), out.calls.size());
        out.calls.push_back({d.id, d.name, ""});
      }
      EXPECT_LT(size_t(d.index), out.calls.size());
      out.calls.at(size_t(d.index)).arguments += d.arguments;
    }
  };
  size_t at = 0;
  for (size_t c : cuts) {
    take(p.feed(text.substr(at, c - at)));
    at = c;
  }
  take(p.feed(text.substr(at)));
  take(p.flush());
  EXPECT_EQ(p.calls().size(), out.calls.size());
  return out;
}

void expect_same(const Parsed& a, const Parsed& b, const std::string& what) {
  EXPECT_EQ(a.content, b.content) << what;
  ASSERT_EQ(a.calls.size(), b.calls.size()) << what;
  for (size_t i = 0; i < a.calls.size(); ++i) {
    EXPECT_EQ(a.calls[i].id, b.calls[i].id) << what;
    EXPECT_EQ(a.calls[i].name, b.calls[i].name) << what;
    EXPECT_EQ(a.calls[i].arguments, b.calls[i].arguments) << what;
  }
}

const std::string kV3 = "Let me check." + B + CB + "function" + SEP + "get_weather\n```json\n{\"city\": \"Paris\", \"unit\": \"c`\"}\n```" +
                        CE + "\n" + CB + "function" + SEP + "get_time\n```json\n{\"tz\":\"CET\"}\n```" + CE + E;
const std::string kV31 = B + CB + "get_weather" + SEP + "{\"city\": \"Paris\"}" + CE + CB + "get_time" + SEP + "{}" + CE + E;

TEST(ToolCallParser, V3WholeText) {
  const Parsed p = parse_in_pieces(ToolCallFormat::v3, kV3, {});
  EXPECT_EQ(p.content, "Let me check.");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[0].id, "call_0");
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(p.calls[0].arguments, "{\"city\": \"Paris\", \"unit\": \"c`\"}");
  EXPECT_EQ(json::parse(p.calls[0].arguments)["unit"], "c`");
  EXPECT_EQ(p.calls[1].id, "call_1");
  EXPECT_EQ(p.calls[1].name, "get_time");
  EXPECT_EQ(p.calls[1].arguments, "{\"tz\":\"CET\"}");
}

TEST(ToolCallParser, V31WholeText) {
  const Parsed p = parse_in_pieces(ToolCallFormat::v31, kV31, {});
  EXPECT_EQ(p.content, "");
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(p.calls[0].arguments, "{\"city\": \"Paris\"}");
  EXPECT_EQ(p.calls[1].name, "get_time");
  EXPECT_EQ(p.calls[1].arguments, "{}");
}

// Every split into two pieces and every byte fed alone (markers split across tokens, the fence split) assemble to
// the same content and calls as the whole text.
TEST(ToolCallParser, MarkersSplitAnywhereGiveTheSameCalls) {
  for (auto [f, text] : {std::pair{ToolCallFormat::v3, kV3}, std::pair{ToolCallFormat::v31, kV31}}) {
    const Parsed whole = parse_in_pieces(f, text, {});
    for (size_t c = 1; c < text.size(); ++c) expect_same(parse_in_pieces(f, text, {c}), whole, "cut at " + std::to_string(c));
    std::vector<size_t> every;
    for (size_t c = 1; c < text.size(); ++c) every.push_back(c);
    expect_same(parse_in_pieces(f, text, every), whole, "byte by byte");
    std::mt19937 rng(7);
    for (int trial = 0; trial < 50; ++trial) {
      std::vector<size_t> cuts;
      for (size_t c = 1; c < text.size(); ++c)
        if (rng() % 5 == 0) cuts.push_back(c);
      expect_same(parse_in_pieces(f, text, cuts), whole, "random cuts");
    }
  }
}

TEST(ToolCallParser, AFenceOnTheArgumentsLineIsDroppedOnceHoweverSplit) {
  // Found by fuzz_tool_calls: "```js{...}" (no newline after the fence) and a closing fence that a split put at the
  // start of a piece were read as a second opening fence, and the arguments were lost.
  const std::string text = B + CB + "function" + SEP + "f\n```js{\"a\": 1}\n```" + CE + E;
  const Parsed whole = parse_in_pieces(ToolCallFormat::v3, text, {});
  ASSERT_EQ(whole.calls.size(), 1u);
  EXPECT_EQ(whole.calls[0].arguments, "{\"a\": 1}");
  for (size_t c = 1; c < text.size(); ++c) expect_same(parse_in_pieces(ToolCallFormat::v3, text, {c}), whole, "cut");
  std::vector<size_t> every;
  for (size_t c = 1; c < text.size(); ++c) every.push_back(c);
  expect_same(parse_in_pieces(ToolCallFormat::v3, text, every), whole, "byte by byte");
}

TEST(ToolCallParser, TextWithoutCallsAndLookalikesStaysContent) {
  const std::string text = "a < b and <｜tool not a marker ``` x";
  for (size_t c = 1; c < text.size(); ++c) {
    const Parsed p = parse_in_pieces(ToolCallFormat::v3, text, {c});
    EXPECT_EQ(p.content, text);
    EXPECT_TRUE(p.calls.empty());
  }
}

TEST(ToolCallParser, TextAfterTheCallsIsContent) {
  const Parsed p = parse_in_pieces(ToolCallFormat::v31, B + CB + "f" + SEP + "{\"a\":1}" + CE + E + " done", {});
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.content, " done");
}

TEST(ToolCallParser, ACallCutShortEndsWithWhatItHad) {
  // max_tokens reached inside the arguments: the call is reported with its partial arguments.
  const Parsed p = parse_in_pieces(ToolCallFormat::v3, B + CB + "function" + SEP + "f\n```json\n{\"a\": [1, 2", {});
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].name, "f");
  EXPECT_EQ(p.calls[0].arguments, "{\"a\": [1, 2");
  // Cut inside the header: no call, no stray text.
  const Parsed q = parse_in_pieces(ToolCallFormat::v3, "hi" + B + CB + "function" + SEP + "get_w", {});
  EXPECT_EQ(q.content, "hi");
  EXPECT_TRUE(q.calls.empty());
  // A call without arguments gets "{}".
  const Parsed r = parse_in_pieces(ToolCallFormat::v31, B + CB + "f" + SEP + CE + E, {});
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].arguments, "{}");
}

// ---- the forced call's constraint (grammar engine pieces) ----

// A toy vocabulary: the markers as added tokens (only their ids produce them), pieces of text, an empty token.
std::shared_ptr<const grammar::Vocabulary> toy_vocab() {
  std::vector<std::string> bytes = {"", B, E, CB, CE, SEP, "function", "get_weather", "get_time", "\n```json\n", "\n```",
                                    "{", "}", "\"", "city", "\":", "1", ",", "hello", "{\"", "Paris\"}", " "};
  std::vector<bool> excluded(bytes.size(), false);
  for (size_t i = 0; i <= 5; ++i) excluded[i] = true;
  return grammar::Vocabulary::from_tokens(std::move(bytes), std::move(excluded));
}
const ToolCallMarkers kMarkers{1, 2, 3, 4, 5};

std::vector<int32_t> allowed(TokenConstraint& c, size_t vocab) {
  std::vector<float> row(vocab, 0.0f);
  c.mask(row);
  std::vector<int32_t> ids;
  for (size_t i = 0; i < vocab; ++i)
    if (std::isfinite(row[i])) ids.push_back(int32_t(i));
  return ids;
}

bool has(const std::vector<int32_t>& ids, int32_t id) { return std::find(ids.begin(), ids.end(), id) != ids.end(); }

TEST(ToolCallConstraint, ForcesTheMarkersTheNamedFunctionAndArgumentsOfItsSchema) {
  const auto vocab = toy_vocab();
  const ChatRequest r = parse_chat_request(R"({"messages": [{"role": "user", "content": "hi"}],
      "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
                  "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "get_time"}}],
      "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})");
  ASSERT_EQ(r.forced_tools.size(), 1u);
  auto c = make_tool_call_constraint(vocab, r.forced_tools, ToolCallFormat::v3, kMarkers);
  // The walk of a whole call; at each step the expected token is allowed and some others are not.
  const std::vector<int32_t> walk = {1, 3, 6, 5, 7, 9, 19, 14, 15, 13, 20, 10, 4, 2};
  for (size_t k = 0; k < walk.size(); ++k) {
    const auto ok = allowed(*c, vocab->size());
    EXPECT_TRUE(has(ok, walk[k])) << "step " << k;
    EXPECT_FALSE(has(ok, 0)) << "the empty token is never allowed";
    if (k == 4) { EXPECT_FALSE(has(ok, 8)) << "get_time is not the named function"; }
    if (k == 6) { EXPECT_FALSE(has(ok, 21)) << "no whitespace in the arguments"; }
    if (k == 7) { EXPECT_FALSE(has(ok, 18)) << "'hello' is not a property of the schema"; }
    EXPECT_FALSE(c->complete());
    c->accept(walk[k]);
  }
  EXPECT_TRUE(c->complete());
  std::string text;
  for (int32_t id : walk) text += vocab->bytes(id);
  const Parsed p = parse_in_pieces(ToolCallFormat::v3, text, {});
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(p.calls[0].name, "get_weather");
  EXPECT_EQ(json::parse(p.calls[0].arguments), json({{"city", "Paris"}}));
}

TEST(ToolCallConstraint, RequiredAllowsAnyFunctionUntilTheNameDecides) {
  const auto vocab = toy_vocab();
  const ChatRequest r = parse_chat_request(R"({"messages": [{"role": "user", "content": "hi"}],
      "tools": [{"type": "function", "function": {"name": "get_weather"}},
                {"type": "function", "function": {"name": "get_time"}}], "tool_choice": "required"})");
  ASSERT_EQ(r.forced_tools.size(), 2u);
  auto c = make_tool_call_constraint(vocab, r.forced_tools, ToolCallFormat::v31, kMarkers);
  for (int32_t id : {1, 3}) c->accept(id);
  const auto ok = allowed(*c, vocab->size());
  EXPECT_TRUE(has(ok, 7));
  EXPECT_TRUE(has(ok, 8));
  EXPECT_FALSE(has(ok, 6)) << "V3.1 has no 'function' type before the name";
  for (int32_t id : {8, 5, 11, 12, 4}) {
    EXPECT_TRUE(has(allowed(*c, vocab->size()), id)) << id;
    c->accept(id);
  }
  EXPECT_FALSE(c->complete());
  c->accept(2);
  EXPECT_TRUE(c->complete());
  EXPECT_THROW(c->accept(7), Error);
}

// ---- the request side ----

std::string chat(const std::string& extra) {
  return R"({"messages": [{"role": "user", "content": "hi"}])" + extra + "}";
}

void expect_400(const std::string& body, const std::string& param, const std::string& words, bool chat_api = true) {
  try {
    if (chat_api) parse_chat_request(body);
    else parse_completion_request(body);
    ADD_FAILURE() << "accepted: " << body;
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, param) << body << " -> " << e.what();
    EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
  }
}

const std::string kWeather = R"(, "tools": [{"type": "function", "function": {"name": "get_weather", "parameters":
  {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])";

TEST(StrictRequests, UnknownFieldsAreRefusedByName) {
  expect_400(chat(R"(, "temprature": 0.5)"), "temprature", "Unrecognized request argument supplied: 'temprature'");
  expect_400(chat(R"(, "functions": [])"), "functions", "send 'tools'");
  expect_400(R"({"prompt": "x", "best_of": 3})", "best_of", "'best_of' is not supported", false);
  expect_400(R"({"prompt": "x", "tools": []})", "tools", "Unrecognized", false);
  // Accepted for compatibility and ignored.
  EXPECT_NO_THROW(parse_chat_request(chat(R"(, "user": "u", "metadata": {"a": "b"}, "store": false, "service_tier": "auto")")));
  EXPECT_NO_THROW(parse_completion_request(R"({"prompt": "x", "best_of": 1, "metadata": {}})"));
}

TEST(StrictRequests, ToolsAndToolChoiceAreValidated) {
  const ChatRequest r = parse_chat_request(chat(kWeather + R"(, "tool_choice": "required")"));
  EXPECT_EQ(r.tool_choice.mode, ToolChoice::Mode::required);
  EXPECT_EQ(parse_chat_request(chat(kWeather)).tool_choice.mode, ToolChoice::Mode::automatic);
  EXPECT_EQ(parse_chat_request(chat("")).tool_choice.mode, ToolChoice::Mode::none);
  const ChatRequest n = parse_chat_request(chat(kWeather + R"(, "tool_choice": {"type": "function", "function": {"name": "get_weather"}})"));
  EXPECT_EQ(n.tool_choice.mode, ToolChoice::Mode::named);
  EXPECT_EQ(n.tool_choice.name, "get_weather");
  expect_400(chat(kWeather + R"(, "tool_choice": {"type": "function", "function": {"name": "nope"}})"), "tool_choice",
             "'nope', which is not among 'tools'");
  expect_400(chat(R"(, "tool_choice": "required")"), "tool_choice", "requires 'tools'");
  expect_400(chat(kWeather + R"(, "tool_choice": "sometimes")"), "tool_choice", "\"sometimes\"");
  expect_400(chat(R"(, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "obj"}}}])"),
             "tools[0].function.parameters.type", "must be one of object");
  expect_400(chat(R"(, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                  "properties": {"x": {"type": "strin"}}}}}])"),
             "tools[0].function.parameters.properties.x.type", "strin");
  expect_400(chat(R"(, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"required": "x"}}}])"),
             "tools[0].function.parameters.required", "array of property names");
  expect_400(chat(R"(, "tools": [{"type": "function", "function": {"name": "bad name"}}])"), "tools[0].function.name",
             "'bad name'");
  expect_400(chat(R"(, "tools": [{"type": "code_interpreter"}])"), "tools[0].type", "\"function\"");
  // A forced call's schema goes through the grammar engine: what it cannot enforce is a 400 naming the keyword.
  const std::string pattern = R"(, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
      "properties": {"x": {"type": "string", "pattern": "^a"}}}}}])";
  expect_400(chat(pattern + R"(, "tool_choice": "required")"), "tools[0].function.parameters", "pattern");
  EXPECT_NO_THROW(parse_chat_request(chat(pattern + R"(, "tool_choice": "auto")")));
}

TEST(StrictRequests, LogitBiasSuffixAndPrefix) {
  const ChatRequest r = parse_chat_request(chat(R"(, "logit_bias": {"17": 100, "3": -100})"));
  ASSERT_EQ(r.sampling.logit_bias.size(), 2u);
  expect_400(chat(R"(, "logit_bias": {"x": 1})"), "logit_bias", "'x'");
  expect_400(chat(R"(, "logit_bias": {"1": 101})"), "logit_bias", "between -100 and 100");
  const CompletionRequest c = parse_completion_request(R"({"prompt": "def f(", "suffix": "return x"})");
  ASSERT_TRUE(c.suffix.has_value());
  expect_400(R"({"prompt": [1, 2], "suffix": "x"})", "suffix", "prompt as text", false);
  const ChatRequest p = parse_chat_request(
      R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "```py\n", "prefix": true}]})");
  EXPECT_TRUE(p.assistant_prefix);
  expect_400(R"({"messages": [{"role": "user", "content": "hi", "prefix": true}]})", "messages[0].prefix", "last message");
}

TEST(Sampler, LogitBiasMakesATokenTheGreedyChoice) {
  std::vector<float> row = {3.0f, 1.0f, -2.0f, 0.5f};
  SamplingParams sp;
  sp.logit_bias = {{2, 100.0f}};
  Sampler s(sp);
  EXPECT_EQ(s.sample(row, {}, {}), 2);
  std::vector<float> row2 = {3.0f, 1.0f, -2.0f, 0.5f};
  sp.logit_bias = {{0, -100.0f}, {99, 5.0f}};  // an id past the row is ignored
  Sampler s2(sp);
  EXPECT_EQ(s2.sample(row2, {}, {}), 1);
}

}  // namespace
}  // namespace moe::server
