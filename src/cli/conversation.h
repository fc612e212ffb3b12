#pragma once
// `moe chat`'s /save and /load: a conversation as a JSON array of messages,
//   [{"role": "system"|"user"|"assistant", "content": "text"}, ...]
// (what the chat template renders). Loading checks every message and throws moe::Error naming the file and
// what is wrong; the chat reports it and goes on with the conversation it had.
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace moe::cli {

// `text` read from `name` (used in errors) -> the messages, checked.
nlohmann::json parse_conversation(std::string_view text, const std::string& name);
nlohmann::json load_conversation(const std::string& path);
void save_conversation(const std::string& path, const nlohmann::json& messages);  // throws naming the file

}  // namespace moe::cli
