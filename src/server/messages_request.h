#pragma once
// Anthropic's Messages API requests (POST /v1/messages) -> the equivalent OpenAI chat request, validated by the same
// parser (messages_api.h has the reply side). Fuzzed by fuzz/fuzz_chat_request.cpp.
#include <nlohmann/json.hpp>

#include <string_view>

#include "server/api.h"

namespace moe::server {

struct MessagesRequest {
  ChatRequest chat;  // the same request in OpenAI's shape
};

MessagesRequest parse_messages_request(std::string_view body, const SamplingParams& defaults = {});
nlohmann::json anthropic_error(const ApiError& e);  // {"type": "error", "error": {"type", "message"}}

}  // namespace moe::server
