#pragma once
// Chat templates: the Jinja template of tokenizer_config.json, rendered by a small Jinja interpreter (jinja.h) with
// the variables transformers' apply_chat_template passes (messages, add_generation_prompt, bos_token, eos_token,
// the other special tokens, tools, plus any extra context such as {"thinking": true}) and the same environment
// options (trim_blocks, lstrip_blocks, loop controls).
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace moe {

namespace jinja {
class Template;
}

// One message in OpenAI chat format. content_is_null: send "content": null (an assistant message that only calls
// tools), which templates test with `is none`.
struct ChatMessage {
  std::string role, content;
  nlohmann::json tool_calls;  // null or [{"type":"function","function":{"name":..,"arguments":".."}}, ...]
  std::string tool_call_id;
  std::string name;
  bool content_is_null = false;
  nlohmann::json to_json() const;
};

class ChatTemplate {
 public:
  // special_tokens: {"bos_token": "...", "eos_token": "...", ...}, as strings.
  ChatTemplate(std::string source, nlohmann::json special_tokens);
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // messages: a JSON array of OpenAI-format messages. Throws moe::Error when the template fails (including its
  // own raise_exception calls).
  std::string render(const nlohmann::json& messages, bool add_generation_prompt,
                     const nlohmann::json& extra_context = nlohmann::json::object()) const;
  // The same with JSON that keeps object keys in their original order (as Python dicts do): a template that prints
  // tool schemas with tojson then matches transformers byte for byte.
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra_context = nlohmann::ordered_json::object()) const;
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     const nlohmann::json& extra_context = nlohmann::json::object()) const;
  const std::string& source() const { return source_; }

 private:
  template <typename Json>
  std::string render_with(const Json& messages, bool add_generation_prompt, const Json& extra_context) const;
  std::string source_;
  nlohmann::json special_tokens_;
  std::unique_ptr<jinja::Template> template_;
};

}  // namespace moe
