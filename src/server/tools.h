#pragma once
// OpenAI function tools on the request side: validating `tools` and `tool_choice`, the DeepSeek tool-call format a
// chat template speaks, and the tools' description in the system prompt for templates that do not render them.
//
// DeepSeek's formats (the markers are added tokens of its tokenizer, not "special": they stay in decoded text):
//   V3 / R1:  <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>
//             ...more calls...<｜tool▁calls▁end｜>
//   V3.1:     <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace moe::server {

inline constexpr std::string_view kToolCallsBegin = "<｜tool▁calls▁begin｜>";
inline constexpr std::string_view kToolCallsEnd = "<｜tool▁calls▁end｜>";
inline constexpr std::string_view kToolCallBegin = "<｜tool▁call▁begin｜>";
inline constexpr std::string_view kToolCallEnd = "<｜tool▁call▁end｜>";
inline constexpr std::string_view kToolSep = "<｜tool▁sep｜>";

// dsml: DeepSeek-V3.2's <｜DSML｜function_calls> markup (server/dsml_parser.h), for V3.2 models without a chat
// template, whose prompts tokenizer/dsv32_encoding.h writes (tools included).
enum class ToolCallFormat { v3, v31, dsml };

struct ToolChoice {
  enum class Mode { none, automatic, required, named } mode = Mode::none;
  std::string name;  // Mode::named
};

// `tools`: [{"type": "function", "function": {"name", "description"?, "parameters"?, "strict"?}}]. Returns the
// array with "parameters" defaulted to an empty object schema; a 400 (ApiError) names what is wrong, e.g.
// "tools[1].function.parameters.properties.x.type".
nlohmann::json validate_tools(const nlohmann::json& tools);
// Structural checks of a JSON Schema (types are known names, properties an object of schemas, required an array of
// strings, items a schema, enum an array); `param` names the schema in the error.
void check_schema(const nlohmann::json& schema, const std::string& param, int depth = 0);
// `tool_choice`: "none" | "auto" | "required" | {"type": "function", "function": {"name"}}; absent: auto with tools,
// none without. A name that is not among `tools` is a 400.
ToolChoice parse_tool_choice(const nlohmann::json* choice, const nlohmann::json& tools);
const nlohmann::json* find_tool(const nlohmann::json& tools, std::string_view name);  // the "function" object

// V3.1's template writes NAME<｜tool▁sep｜>ARGUMENTS; V3/R1's write function<｜tool▁sep｜>NAME and a ```json fence.
ToolCallFormat tool_call_format(std::string_view chat_template_source);
// Whether the chat template renders `tools` itself (otherwise tools_system_prompt goes into the system prompt).
bool template_renders_tools(std::string_view chat_template_source);
// The tools and the call format described for the model, in the system prompt (as DeepSeek's V3.1 template does).
std::string tools_system_prompt(const nlohmann::json& tools, ToolCallFormat format);
// Messages with tools_system_prompt appended to the first system message (or a new one in front).
nlohmann::json messages_with_tools(nlohmann::json messages, const nlohmann::json& tools, ToolCallFormat format);
// One call as the chat template's history expects it, for the formats that the template does not write.
std::string render_tool_call(std::string_view name, std::string_view arguments, ToolCallFormat format);

}  // namespace moe::server
