// libFuzzer target: the server's request JSON parsing (chat with tools, completions, feedback, Anthropic Messages,
// OpenAI Responses, tokenize) and the reasoning splitter.
// Any input must either parse into a request within the documented bounds or throw ApiError with a 4xx status;
// nothing else may escape, crash or trip the sanitizers.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/json_depth.h"
#include "server/api.h"
#include "server/messages_request.h"
#include "server/responses_request.h"
#include "server/reasoning.h"

using namespace moe::server;

namespace {
// min_tokens: chat needs at least 1, completions take 0 (scoring the prompt).
void check_common(const CommonParams& p, int64_t min_tokens = 1) {
  if (p.n < 1 || p.n > 16) std::abort();
  if (p.max_tokens && *p.max_tokens < min_tokens) std::abort();
  if (!(p.sampling.temperature >= 0 && p.sampling.temperature <= 2)) std::abort();
  if (!(p.sampling.top_p > 0 && p.sampling.top_p <= 1)) std::abort();
  if (p.top_logprobs > 20 || p.top_logprobs < -1) std::abort();
  for (const auto& s : p.stop)
    if (s.empty()) std::abort();
  if (p.include_usage && !p.stream) std::abort();
}
template <class F>
void expect_parse_or_4xx(F&& f) {
  try {
    f();
  } catch (const ApiError& e) {
    if (e.status < 400 || e.status >= 500) std::abort();
    (void)e.to_json().dump();
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  expect_parse_or_4xx([&] {
    ChatRequest r = parse_chat_request(body);
    check_common(r);
    if (!r.messages.is_array() || r.messages.empty()) std::abort();
    for (const auto& m : r.messages)
      if (!m.contains("role") || !m.contains("content")) std::abort();
    // Nothing deeper than the limit gets past parsing (it would overflow the stack when copied or rendered).
    for (const auto* j : {&r.messages, &r.tools, &r.chat_template_kwargs})
      if (moe::json_value_depth(*j) > moe::kMaxJsonDepth) std::abort();
  });
  expect_parse_or_4xx([&] {
    CompletionRequest r = parse_completion_request(body);
    check_common(r, 0);
    if (!r.prompt_text && r.prompt_tokens.empty()) std::abort();
  });
  // Anthropic and Responses requests become chat requests: the same bounds hold.
  auto check_chat = [](const ChatRequest& r) {
    check_common(r);
    if (!r.messages.is_array() || r.messages.empty()) std::abort();
    if ((r.tool_choice.mode == ToolChoice::Mode::required || r.tool_choice.mode == ToolChoice::Mode::named) &&
        r.forced_tools.empty())
      std::abort();
    for (const auto& [id, bias] : r.sampling.logit_bias)
      if (id < 0 || !(bias >= -100 && bias <= 100)) std::abort();
  };
  expect_parse_or_4xx([&] { check_chat(parse_messages_request(body).chat); });
  expect_parse_or_4xx([&] { check_chat(parse_responses_request(body).chat); });
  expect_parse_or_4xx([&] { (void)parse_tokenize_request(body); });
  expect_parse_or_4xx([&] { (void)parse_detokenize_request(body); });
  expect_parse_or_4xx([&] {
    FeedbackRequest f = parse_feedback_request(body);
    if (f.rating != 1 && f.rating != -1) std::abort();
    if (moe::json_value_depth(f.conversation) > moe::kMaxJsonDepth) std::abort();
  });
  // The reasoning splitter loses no bytes, however the text is split.
  ReasoningParser p(true, size % 2 == 0);
  std::string out;
  const size_t step = 1 + size % 7;
  for (size_t i = 0; i < size; i += step) {
    auto d = p.feed(body.substr(i, step));
    out += d.reasoning + d.content;
  }
  auto d = p.flush();
  out += d.reasoning + d.content;
  if (out.size() > size) std::abort();
  return 0;
}
