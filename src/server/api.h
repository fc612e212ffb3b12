#pragma once
// OpenAI request bodies -> validated requests. Every problem a client can cause becomes an ApiError with the HTTP
// status and OpenAI's error object fields; nothing here touches the model (fuzzed by fuzz/fuzz_chat_request.cpp).
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "engine/grammar/schema.h"
#include "engine/sampler.h"
#include "server/tools.h"

namespace moe::server {

struct ApiError : std::runtime_error {
  int status;
  std::string type, param, code;
  ApiError(int status, std::string message, std::string param = "", std::string code = "",
           std::string type = "invalid_request_error")
      : std::runtime_error(std::move(message)), status(status), type(std::move(type)), param(std::move(param)),
        code(std::move(code)) {}
  nlohmann::json to_json() const;  // {"error": {"message", "type", "param", "code"}}
};

// Fields shared by chat and text completions.
struct CommonParams {
  std::string model;  // empty: the served model
  int32_t n = 1;
  bool stream = false, include_usage = false;
  std::optional<int64_t> max_tokens;  // absent: the server's default
  SamplingParams sampling;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  int32_t top_logprobs = -1;  // -1: no logprobs
  std::string user;
  // response_format json_object / json_schema: the output is one JSON value of this schema (null: free text).
  std::shared_ptr<const grammar::Schema> response_schema;
};

struct ChatRequest : CommonParams {
  nlohmann::json messages;  // normalised: array of {"role", "content": string|null, ...}
  nlohmann::json tools;     // null or the validated array (tools.h)
  ToolChoice tool_choice;   // auto when tools are given, none otherwise
  bool parallel_tool_calls = true;
  // tool_choice required / named: the functions the reply must call one of, with their compiled parameter schemas.
  std::vector<std::pair<std::string, std::shared_ptr<const grammar::Schema>>> forced_tools;
  // The last message is an assistant message with "prefix": true (DeepSeek's prefill): its content is
  // continued, not answered; it stays in `messages`.
  bool assistant_prefix = false;
  nlohmann::json chat_template_kwargs = nlohmann::json::object();
};

struct CompletionRequest : CommonParams {
  std::optional<std::string> prompt_text;
  std::vector<int32_t> prompt_tokens;  // when the prompt is given as token ids
  std::optional<std::string> suffix;   // fill-in-the-middle: the text after the hole (prompt_text only)
  bool echo = false;
};

struct FeedbackRequest {
  nlohmann::json conversation;  // array of messages (the prompt)
  std::string answer;
  int rating = 0;  // +1 thumbs up, -1 thumbs down
  std::string model, comment;
};

// Strict requests: a top-level field that is neither implemented nor on the documented accepted-and-ignored list
// (`user`, `metadata`, `store`, `service_tier`; see docs/server.md) is a 400 naming it, code "unknown_parameter".
// POST /tokenize (vLLM's shape): {"model"?, "prompt": text, "add_special_tokens"?: bool (default true)}.
struct TokenizeRequest {
  std::string model, prompt;
  bool add_special_tokens = true;
};
// POST /detokenize: {"model"?, "tokens": [ids]}.
struct DetokenizeRequest {
  std::string model;
  std::vector<int32_t> tokens;
};

nlohmann::json parse_json_body(std::string_view body);  // 400 on malformed JSON or invalid UTF-8
TokenizeRequest parse_tokenize_request(std::string_view body);
DetokenizeRequest parse_detokenize_request(std::string_view body);
// `defaults`: the sampling of a request that leaves a parameter out (the served model's generation_config.json,
// ServerOptions::default_sampling); each parameter the body gives replaces its default.
ChatRequest parse_chat_request(std::string_view body, const SamplingParams& defaults = {});
CompletionRequest parse_completion_request(std::string_view body, const SamplingParams& defaults = {});
FeedbackRequest parse_feedback_request(std::string_view body);

}  // namespace moe::server
