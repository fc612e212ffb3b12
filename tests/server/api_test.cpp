// Request parsing limits (src/server/api.cpp) that guard the rest of the server: JSON nesting is bounded on
// the raw body, before parsing, so no deep document is built, copied or converted into template values.
#include "server/api.h"

#include <gtest/gtest.h>

#include <functional>

#include "core/json_depth.h"
#include "server/messages_request.h"
#include "server/responses_request.h"

namespace moe::server {
namespace {

std::string deep(size_t levels) { return std::string(levels, '[') + std::string(levels, ']'); }

void expect_nesting_error(const std::function<void()>& parse, const std::string& what) {
  try {
    parse();
    ADD_FAILURE() << what << ": accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400) << what;
    EXPECT_NE(std::string(e.what()).find("nesting deeper than 128 levels"), std::string::npos)
        << what << e.what();
  }
}

TEST(Api, DeeplyNestedBodiesAreRefusedBeforeParsing) {
  const std::string hi = R"([{"role": "user", "content": "hi"}])";
  // The body's own object adds levels: a value 128 deep is already past the limit.
  for (size_t levels : {size_t(kMaxJsonDepth), size_t(15000), size_t(100000)}) {
    const std::string d = deep(levels);
    const std::string bodies[] = {
        R"({"messages": )" + hi + R"(, "tools": )" + d + "}",
        R"({"messages": )" + hi + R"(, "chat_template_kwargs": {"x": )" + d + "}}",
        R"({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": )"
        R"({"name": "f", "arguments": "{}"}, "x": )" +
            d + "}]}]}",
    };
    for (const auto& body : bodies) {
      expect_nesting_error([&] { parse_chat_request(body); }, "chat " + std::to_string(levels));
    }
    expect_nesting_error([&] { parse_completion_request(R"({"prompt": "x", "extra": )" + d + "}"); },
                         "completion");
    expect_nesting_error(
        [&] { parse_feedback_request(R"({"answer": "a", "rating": 1, "conversation": )" + d + "}"); },
        "feedback");
  }
  // Within the limit: template arguments nested 100 levels deep are fine.
  const std::string ok = R"({"messages": )" + hi + R"(, "chat_template_kwargs": {"x": )" + deep(100) + "}}";
  EXPECT_EQ(parse_chat_request(ok).chat_template_kwargs["x"].size(), 1u);
  // Brackets inside strings do not count.
  EXPECT_NO_THROW(parse_chat_request(R"({"messages": [{"role": "user", "content": ")" +
                                     std::string(1000, '[') + R"("}]})"));
}

// response_format: text is free, json_object and json_schema compile to a schema; every mistake is a 400 that
// names the field (param) and what was wrong.
TEST(Api, ResponseFormat) {
  auto chat = [](const std::string& rf) {
    return parse_chat_request(R"({"messages":[{"role":"user","content":"hi"}],"response_format":)" + rf + "}");
  };
  EXPECT_EQ(chat(R"({"type":"text"})").response_schema, nullptr);
  EXPECT_NE(chat(R"({"type":"json_object"})").response_schema, nullptr);
  const auto r = chat(R"({"type":"json_schema","json_schema":{"name":"p","strict":true,
      "schema":{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"],"additionalProperties":false}}})");
  ASSERT_NE(r.response_schema, nullptr);
  EXPECT_EQ(r.response_schema->grammar().nodes[size_t(r.response_schema->grammar().root)].kind,
            grammar::Kind::object);
  struct Bad {
    std::string rf, param, says;
  };
  const Bad bad[] = {
      {R"("json")", "response_format", "must be an object"},
      {R"({"type":"bogus"})", "response_format.type", "'bogus'"},
      {R"({})", "response_format.type", "'type'"},
      {R"({"type":"json_schema"})", "response_format.json_schema", "'json_schema'"},
      {R"({"type":"json_schema","json_schema":{"schema":{}}})", "response_format.json_schema.name", "'name'"},
      {R"({"type":"json_schema","json_schema":{"name":"x"}})", "response_format.json_schema.schema", "'schema'"},
      {R"({"type":"json_schema","json_schema":{"name":"x","strict":"yes","schema":{}}})",
       "response_format.json_schema.strict", "boolean"},
      {R"({"type":"json_schema","json_schema":{"name":"x","schema":{"type":"string","pattern":"a+"}}})",
       "response_format.json_schema.schema", "'pattern'"},
      {R"({"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"a":{"type":"wat"}}}}})",
       "response_format.json_schema.schema", "#/properties/a"},
      {R"({"type":"json_schema","json_schema":{"name":"x","schema":{"$ref":"#/$defs/nope"}}})",
       "response_format.json_schema.schema", "#/$defs/nope"},
  };
  for (const auto& b : bad) {
    try {
      chat(b.rf);
      ADD_FAILURE() << b.rf << ": accepted";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400) << b.rf;
      EXPECT_EQ(e.param, b.param) << b.rf;
      EXPECT_NE(std::string(e.what()).find(b.says), std::string::npos) << b.rf << " -> " << e.what();
    }
  }
}

// max_tokens 0 scores a prompt on /v1/completions (echo + logprobs give the prompt's logprobs); chat needs at least
// 1 as OpenAI requires; negative counts and more alternatives than 20 are 400s naming the field.
TEST(Api, MaxTokensZeroAndLogprobsBounds) {
  auto expect_bad = [](const std::function<void()>& parse, const std::string& param, const std::string& what) {
    try {
      parse();
      ADD_FAILURE() << param << ": accepted";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400) << param;
      EXPECT_EQ(e.param, param);
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  const auto r = parse_completion_request(R"({"prompt": "x", "max_tokens": 0, "echo": true, "logprobs": 2})");
  EXPECT_EQ(r.max_tokens, 0);
  EXPECT_TRUE(r.echo);
  EXPECT_EQ(r.top_logprobs, 2);
  EXPECT_EQ(parse_completion_request(R"({"prompt": "x", "max_completion_tokens": 0})").max_tokens, 0);
  expect_bad([] { parse_completion_request(R"({"prompt": "x", "max_tokens": -1})"); }, "max_tokens", "between 0 and");
  expect_bad([] { parse_completion_request(R"({"prompt": "x", "logprobs": 21})"); }, "logprobs", "between 0 and 20");
  expect_bad([] { parse_completion_request(R"({"prompt": "x", "logprobs": -1})"); }, "logprobs", "between 0 and 20");
  const std::string msgs = R"("messages": [{"role": "user", "content": "hi"}])";
  expect_bad([&] { parse_chat_request("{" + msgs + R"(, "max_tokens": 0})"); }, "max_tokens", "at least 1");
  expect_bad([&] { parse_chat_request("{" + msgs + R"(, "max_completion_tokens": 0})"); }, "max_completion_tokens",
             "at least 1");
  expect_bad([&] { parse_chat_request("{" + msgs + R"(, "max_tokens": -5})"); }, "max_tokens", "between 1 and");
  expect_bad([&] { parse_chat_request("{" + msgs + R"(, "logprobs": true, "top_logprobs": 21})"); }, "top_logprobs",
             "between 0 and 20");
}

// The served model's generation_config.json gives the sampling of requests that leave a parameter out (as vLLM
// does); what a request gives wins, 0 included. All four request shapes take the defaults.
TEST(Api, SamplingDefaultsFillOnlyWhatTheRequestLeavesOut) {
  SamplingParams d;
  d.temperature = 0.6f;
  d.top_p = 0.95f;
  d.top_k = 20;
  d.repetition_penalty = 1.1f;
  const std::string msgs = R"("messages": [{"role": "user", "content": "hi"}])";
  const ChatRequest plain = parse_chat_request("{" + msgs + "}", d);
  EXPECT_FLOAT_EQ(plain.sampling.temperature, 0.6f);
  EXPECT_FLOAT_EQ(plain.sampling.top_p, 0.95f);
  EXPECT_EQ(plain.sampling.top_k, 20);
  EXPECT_FLOAT_EQ(plain.sampling.repetition_penalty, 1.1f);
  const ChatRequest given = parse_chat_request("{" + msgs + R"(, "temperature": 0, "top_p": 0.5, "top_k": -1})", d);
  EXPECT_EQ(given.sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(given.sampling.top_p, 0.5f);
  EXPECT_EQ(given.sampling.top_k, 0);
  EXPECT_FLOAT_EQ(given.sampling.repetition_penalty, 1.1f);
  EXPECT_EQ(parse_chat_request("{" + msgs + "}").sampling.temperature, 0.0f);  // no defaults: greedy
  const CompletionRequest c = parse_completion_request(R"({"prompt": "hi", "top_p": 0.8})", d);
  EXPECT_FLOAT_EQ(c.sampling.temperature, 0.6f);
  EXPECT_FLOAT_EQ(c.sampling.top_p, 0.8f);
  const MessagesRequest m =
      parse_messages_request(R"({"model": "m", "max_tokens": 8, "temperature": 0.2, )" + msgs + "}", d);
  EXPECT_FLOAT_EQ(m.chat.sampling.temperature, 0.2f);
  EXPECT_FLOAT_EQ(m.chat.sampling.top_p, 0.95f);
  const ResponsesRequest r = parse_responses_request(R"({"model": "m", "input": "hi"})", d);
  EXPECT_FLOAT_EQ(r.chat.sampling.temperature, 0.6f);
  EXPECT_EQ(r.chat.sampling.top_k, 20);
}

}  // namespace
}  // namespace moe::server
