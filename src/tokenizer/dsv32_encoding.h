#pragma once
// DeepSeek-V3.2's prompt format, written natively: V3.2 ships no Jinja chat template, only DeepSeek's Python encoder
// (encoding/encoding_dsv32.py in the model repository). This reproduces its encode_messages byte for byte
// (tests/data/dsv32_encoder, made by scripts/gen_dsv32_encoder_fixture.py from that encoder):
//
//   <｜begin▁of▁sentence｜>SYSTEM[\n\n## Tools ... <functions>{schema}\n...</functions>\n][\n\n## Response Format ...]
//   <｜User｜>TEXT<｜Assistant｜></think>                  (chat mode, or any user turn but the last)
//   <｜User｜>TEXT<｜Assistant｜><think>                   (thinking mode, the last user turn)
//   [REASONING</think>]CONTENT[\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name="F">\n
//     <｜DSML｜parameter name="K" string="true|false">V</｜DSML｜parameter>...\n</｜DSML｜invoke>...
//     \n</｜DSML｜function_calls>]<｜end▁of▁sentence｜>     (an assistant turn; reasoning only after the last user turn)
//   \n\n<function_results>\n<result>OUT</result>...\n</function_results>\n\n<think> or </think>   (tool outputs)
//
// JSON inside the prompt (tool schemas, non-string arguments, response formats) is written as Python's
// json.dumps(ensure_ascii=False) writes it: ", " and ": " separators, keys in the order given.
#include <nlohmann/json.hpp>

#include <string>

namespace moe::dsv32 {

struct EncodeOptions {
  bool thinking = false;       // thinking_mode "thinking" (else "chat")
  bool drop_thinking = true;   // drop reasoning of assistant turns before the last user turn (thinking mode)
  bool add_bos = true;         // start with <｜begin▁of▁sentence｜>
};

// messages: OpenAI-style messages (role system | developer | user | assistant | tool; content; assistant
// reasoning_content or reasoning, tool_calls [{"function": {"name", "arguments": JSON text}}]; system and developer
// messages may carry OpenAI `tools` and a `response_format` object). Throws moe::Error naming the message and field
// for what the encoder cannot encode: an unknown role, a tool call without a name or with arguments that are not a
// JSON object, a tool result with no assistant tool call before it, a thinking-mode assistant turn after the last
// user turn with neither reasoning nor tool calls.
std::string encode_messages(const nlohmann::ordered_json& messages, const EncodeOptions& options);

// A chat request as vLLM's V3.2 tokenizer turns it into encoder input: non-empty `tools` (OpenAI format) become a
// system message in front, and old reasoning is dropped when the conversation ends with a user turn.
std::string chat_prompt(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools, bool thinking);

// json.dumps(value, ensure_ascii=False) as Python writes it.
std::string python_json(const nlohmann::ordered_json& value);

}  // namespace moe::dsv32
