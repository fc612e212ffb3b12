// libFuzzer target: a chat template (tokenizer_config.json's "chat_template") from arbitrary bytes, parsed and
// rendered for a fixed conversation (system, user, an assistant tool call, the tool's answer, user) with a
// generation prompt. A template that cannot be parsed or rendered must fail with a moe::Error that says why:
// any other exception, a crash, a hang or unbounded memory is a bug.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "core/error.h"
#include "tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const nlohmann::json messages = nlohmann::json::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "id": "c1",
      "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
    {"role": "user", "content": "<think>and tomorrow?</think>"}
  ])");
  static const nlohmann::json special = {{"bos_token", "<｜begin▁of▁sentence｜>"}, {"eos_token", "<｜end▁of▁sentence｜>"}};
  try {
    const moe::ChatTemplate chat(std::string(reinterpret_cast<const char*>(data), size), special);
    (void)chat.render(messages, /*add_generation_prompt=*/true, {{"thinking", true}});
  } catch (const moe::Error&) {
  }
  return 0;
}
