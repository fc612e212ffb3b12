#pragma once
// Splits a streamed reply into reasoning_content and content at <think> ... </think>, with the tags possibly split
// across tokens and stream chunks. Whether the reply starts inside reasoning is decided from the rendered prompt:
// DeepSeek-R1's template ends the prompt with "<think>\n", so only "</think>" appears in the output; R1-0528 writes
// both tags; a hybrid model (V3.1) thinks only when its template opened <think> (chat_template_kwargs thinking).
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace moe::server {

enum class ReasoningMode { auto_detect, on, off };

// True when the rendered prompt leaves the model inside a <think> block (ends with "<think>" plus whitespace).
bool prompt_opens_reasoning(std::string_view rendered_prompt);
// Whether a chat template knows about reasoning tags at all (a non-reasoning model gets everything in content).
bool template_supports_reasoning(std::string_view chat_template_source);
// chat_template_kwargs with DeepSeek's switch under both of its names: V3.1's template reads `thinking`, while
// vLLM and SGLang also accept `enable_thinking` (Qwen's name) for DeepSeek; when either is given, both are set to
// `thinking or enable_thinking`, as vLLM's DeepSeekV3ReasoningParser reads them. Other keys pass through.
nlohmann::json thinking_kwargs(nlohmann::json chat_template_kwargs);
// Whether chat_template_kwargs (after thinking_kwargs) ask for thinking; false when neither name is given.
bool thinking_requested(const nlohmann::json& chat_template_kwargs);

class ReasoningParser {
 public:
  // enabled: split at all (otherwise everything is content). in_reasoning: the reply starts inside <think>.
  ReasoningParser(bool enabled, bool in_reasoning) : enabled_(enabled), in_reasoning_(enabled && in_reasoning) {}
  struct Delta {
    std::string reasoning, content;
  };
  Delta feed(std::string_view text);
  Delta flush();  // the held-back rest at the end of the reply
  bool in_reasoning() const { return in_reasoning_; }

 private:
  bool enabled_, in_reasoning_;
  bool content_started_ = false;  // an opening <think> is only recognised before any content
  bool strip_newlines_ = false;   // after </think>, drop the newlines that separate it from the answer
  std::string pending_;
};

}  // namespace moe::server
