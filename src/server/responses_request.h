#pragma once
// OpenAI's Responses API requests (POST /v1/responses) -> the equivalent chat request, validated by the same parser
// (responses_api.h has the reply side). Fuzzed by fuzz/fuzz_chat_request.cpp.
#include <nlohmann/json.hpp>

#include <string_view>

#include "server/api.h"

namespace moe::server {

struct ResponsesRequest {
  ChatRequest chat;     // the same request in chat completions' shape
  nlohmann::json echo;  // fields the response object repeats (instructions, tools, tool_choice, ...)
};

ResponsesRequest parse_responses_request(std::string_view body, const SamplingParams& defaults = {});

}  // namespace moe::server
