#include "tokenizer/chat_template.h"

#include "core/error.h"
#include "core/json_depth.h"
#include "tokenizer/jinja.h"

namespace moe {

nlohmann::json ChatMessage::to_json() const {
  nlohmann::json m = {{"role", role}};
  m["content"] = content_is_null ? nlohmann::json() : nlohmann::json(content);
  if (!tool_calls.is_null()) m["tool_calls"] = tool_calls;
  if (!tool_call_id.empty()) m["tool_call_id"] = tool_call_id;
  if (!name.empty()) m["name"] = name;
  return m;
}

ChatTemplate::ChatTemplate(std::string source, nlohmann::json special_tokens)
    : source_(std::move(source)),
      special_tokens_(std::move(special_tokens)),
      template_(std::make_unique<jinja::Template>(source_)) {}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

template <typename Json>
std::string ChatTemplate::render_with(const Json& messages, bool add_generation_prompt,
                                      const Json& extra_context) const {
  if (!messages.is_array()) fail("chat template: messages must be a JSON array");
  for (const auto& m : messages)
    if (!m.is_object() || !m.contains("role")) fail("chat template: each message must be an object with a role");
  // Before the copies below (recursive): the values the template will see are bounded like parsed input.
  bool too_deep = json_value_depth(messages) > kMaxJsonDepth;
  if (extra_context.is_object())
    for (const auto& [k, v] : extra_context.items()) too_deep = too_deep || json_value_depth(v) > kMaxJsonDepth;
  if (too_deep) fail("chat template: JSON input nesting deeper than {} levels", kMaxJsonDepth);
  // The variables transformers' apply_chat_template passes; extra context (e.g. {"thinking": true}) on top.
  Json context = Json::object();
  for (const auto& [k, v] : special_tokens_.items()) context[k] = v.template get<std::string>();
  context["messages"] = messages;
  context["add_generation_prompt"] = add_generation_prompt;
  context["tools"] = nullptr;
  context["documents"] = nullptr;
  if (extra_context.is_object())
    for (const auto& [k, v] : extra_context.items()) context[k] = v;
  return template_->render(context);
}

std::string ChatTemplate::render(const nlohmann::json& messages, bool add_generation_prompt,
                                 const nlohmann::json& extra_context) const {
  return render_with(messages, add_generation_prompt, extra_context);
}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra_context) const {
  return render_with(messages, add_generation_prompt, extra_context);
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                 const nlohmann::json& extra_context) const {
  nlohmann::json array = nlohmann::json::array();
  for (const auto& m : messages) array.push_back(m.to_json());
  return render(array, add_generation_prompt, extra_context);
}

}  // namespace moe
