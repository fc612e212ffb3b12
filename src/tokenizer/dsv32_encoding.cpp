// DeepSeek-V3.2's encoder (see dsv32_encoding.h): one function per message role, following encode_messages.
#include "tokenizer/dsv32_encoding.h"

#include <fmt/format.h>

#include "core/error.h"

namespace moe::dsv32 {

using ojson = nlohmann::ordered_json;

namespace {

constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";
constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
constexpr std::string_view kThinkStart = "<think>";
constexpr std::string_view kThinkEnd = "</think>";
constexpr std::string_view kDsml = "｜DSML｜";

// The tools section of a system (or developer) message; {dsml} and the thinking tags filled in, then the schemas.
// Its wording is DeepSeek's (encoding_dsv32.py in deepseek-ai/DeepSeek-V3.2, MIT License, Copyright (c) 2023
// DeepSeek): the model was trained on this text, so it is reproduced exactly.
std::string tools_section(const std::string& schemas) {
  const std::string d(kDsml);
  return "## Tools\n"
         "You have access to a set of tools you can use to answer the user's question.\n"
         "You can invoke functions by writing a \"<" + d + "function_calls>\" block like the following as part of your "
         "reply to the user:\n"
         "<" + d + "function_calls>\n"
         "<" + d + "invoke name=\"$FUNCTION_NAME\">\n"
         "<" + d + "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</" + d + "parameter>\n"
         "...\n"
         "</" + d + "invoke>\n"
         "<" + d + "invoke name=\"$FUNCTION_NAME2\">\n"
         "...\n"
         "</" + d + "invoke>\n"
         "</" + d + "function_calls>\n"
         "String and scalar parameters should be specified as is without any escaping or quotes, while lists and "
         "objects should use JSON format. The \"string\" attribute should be set to \"true\" for string type "
         "parameters and \"false\" for other types (numbers, booleans, arrays, objects).\n"
         "If the thinking_mode is enabled, then after function results you should strongly consider outputting a "
         "thinking block. Here is an example:\n"
         "<" + d + "function_calls>\n"
         "...\n"
         "</" + d + "function_calls>\n"
         "<function_results>\n"
         "...\n"
         "</function_results>\n" +
         std::string(kThinkStart) + "...thinking about results" + std::string(kThinkEnd) + "\n"
         "Here are the functions available in JSONSchema format:\n"
         "<functions>\n" + schemas + "\n</functions>\n";
}

// Python's truthiness of an optional field: absent, null, false, 0, "", [] and {} are all "not given".
bool given(const ojson& m, const char* key) {
  auto it = m.find(key);
  if (it == m.end()) return false;
  const ojson& v = *it;
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  return !v.empty();  // string, array, object
}

// A text field; null or absent -> "" when optional, otherwise an error naming it.
std::string text(const ojson& m, const char* key, size_t index, bool optional) {
  auto it = m.find(key);
  if (it == m.end() || it->is_null()) {
    if (optional) return "";
    fail("messages[{}] ({}): '{}' must be a string", index, m.value("role", std::string("?")), key);
  }
  if (!it->is_string()) fail("messages[{}]: '{}' must be a string, not {}", index, key, it->type_name());
  return it->get<std::string>();
}

std::string render_tools(const ojson& tools, size_t index) {
  if (!tools.is_array()) fail("messages[{}].tools must be an array", index);
  std::string schemas;
  for (size_t i = 0; i < tools.size(); ++i) {
    const ojson& t = tools[i];
    if (!t.is_object() || !t.contains("function"))
      fail("messages[{}].tools[{}] has no 'function' (OpenAI tool format)", index, i);
    if (i) schemas += '\n';
    schemas += python_json(t["function"]);
  }
  return tools_section(schemas);
}

std::string response_format_section(const ojson& rf) {
  return "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n" + python_json(rf);
}

// name="K" string="true">V or string="false">JSON, one line per argument, in the arguments' own key order.
std::string dsml_arguments(const ojson& call, size_t index, size_t j) {
  const ojson& fn = call.contains("function") ? call["function"] : ojson();
  const std::string where = fmt::format("messages[{}].tool_calls[{}].function", index, j);
  if (!fn.is_object() || !fn.contains("arguments") || !fn["arguments"].is_string())
    fail("{}.arguments must be a string of JSON", where);
  ojson args;
  try {
    args = ojson::parse(fn["arguments"].get<std::string>());
  } catch (const ojson::exception& e) {
    fail("{}.arguments is not valid JSON: {}", where, e.what());
  }
  if (!args.is_object()) fail("{}.arguments must be a JSON object, not {}", where, args.type_name());
  std::string out;
  bool first = true;
  for (const auto& [k, v] : args.items()) {
    if (!first) out += '\n';
    first = false;
    const bool is_str = v.is_string();
    out += fmt::format("<{}parameter name=\"{}\" string=\"{}\">{}</{}parameter>", kDsml, k, is_str ? "true" : "false",
                       is_str ? v.get<std::string>() : python_json(v), kDsml);
  }
  return out;
}

std::string dsml_tool_calls(const ojson& calls, size_t index) {
  if (!calls.is_array()) fail("messages[{}].tool_calls must be an array", index);
  std::string body;
  for (size_t j = 0; j < calls.size(); ++j) {
    const ojson& c = calls[j];
    const ojson* fn = c.is_object() && c.contains("function") && c["function"].is_object() ? &c["function"] : nullptr;
    if (!fn || !fn->contains("name") || !(*fn)["name"].is_string() || (*fn)["name"].get<std::string>().empty())
      fail("messages[{}].tool_calls[{}] has no function name", index, j);
    if (j) body += '\n';
    body += fmt::format("<{}invoke name=\"{}\">\n{}\n</{}invoke>", kDsml, (*fn)["name"].get<std::string>(),
                        dsml_arguments(c, index, j), kDsml);
  }
  return fmt::format("\n\n<{}function_calls>\n{}\n</{}function_calls>", kDsml, body, kDsml);
}

long last_user_index(const ojson& messages) {
  for (long i = long(messages.size()) - 1; i >= 0; --i) {
    const ojson& m = messages[size_t(i)];
    if (m.is_object() && m.contains("role") && (m["role"] == "user" || m["role"] == "developer")) return i;
  }
  return -1;
}

std::string render_message(size_t index, const ojson& messages, bool thinking, long last_user) {
  const ojson& m = messages[index];
  const std::string role = m.at("role").get<std::string>();
  std::string prompt;
  const auto think_or_not = [&](bool open) { return std::string(open && thinking ? kThinkStart : kThinkEnd); };

  if (role == "system") {
    prompt += text(m, "content", index, true);
    if (given(m, "tools")) prompt += "\n\n" + render_tools(m["tools"], index);
    if (given(m, "response_format")) prompt += "\n\n" + response_format_section(m["response_format"]);
  } else if (role == "developer") {
    const std::string content = text(m, "content", index, false);
    if (content.empty()) fail("messages[{}] (developer): 'content' must not be empty", index);
    std::string body;
    if (given(m, "tools")) body += "\n\n" + render_tools(m["tools"], index);
    if (given(m, "response_format")) body += "\n\n" + response_format_section(m["response_format"]);
    body += "\n\n# The user's message is: " + content;
    prompt += "<｜User｜>" + body + "<｜Assistant｜>" + think_or_not(long(index) == last_user);
  } else if (role == "user") {
    prompt += "<｜User｜>" + text(m, "content", index, false) + "<｜Assistant｜>" + think_or_not(long(index) == last_user);
  } else if (role == "tool") {
    // The n-th tool message after an assistant turn answers its n-th call.
    size_t prev = index;
    while (prev > 0 && messages[prev - 1].value("role", std::string()) == "tool") --prev;
    if (prev == 0) fail("messages[{}] (tool): a tool result must follow an assistant message with tool_calls", index);
    const ojson& assistant = messages[prev - 1];
    if (assistant.value("role", std::string()) != "assistant")
      fail("messages[{}] (tool): a tool result must follow an assistant message with tool_calls", index);
    const size_t order = index - prev + 1;
    const size_t n = given(assistant, "tool_calls") && assistant["tool_calls"].is_array() ? assistant["tool_calls"].size() : 0;
    if (n < order)
      fail("messages[{}] (tool): tool result {} of an assistant turn that made {} tool call(s)", index, order, n);
    if (order == 1) prompt += "\n\n<function_results>";
    prompt += "\n<result>" + text(m, "content", index, false) + "</result>";
    if (order == n) prompt += "\n</function_results>\n\n" + think_or_not(long(index) >= last_user);
  } else if (role == "assistant") {
    const bool calls = given(m, "tool_calls");
    const std::string tool_calls = calls ? dsml_tool_calls(m["tool_calls"], index) : "";
    std::string reasoning;  // `reasoning or reasoning_content`, as the reference reads it
    if (given(m, "reasoning")) reasoning = text(m, "reasoning", index, true);
    else if (given(m, "reasoning_content")) reasoning = text(m, "reasoning_content", index, true);
    std::string thinking_part;
    if (thinking && long(index) > last_user) {
      if (reasoning.empty() && !calls)
        fail("messages[{}] (assistant): in thinking mode an assistant turn after the last user turn needs "
             "reasoning_content or tool_calls", index);
      thinking_part = reasoning + std::string(kThinkEnd);
    }
    prompt += thinking_part + text(m, "content", index, true) + tool_calls + std::string(kEos);
  } else {
    fail("messages[{}]: unknown role '{}' (system, developer, user, assistant or tool)", index, role);
  }
  return prompt;
}

}  // namespace

std::string python_json(const ojson& v) {
  if (v.is_object()) {
    std::string s = "{";
    bool first = true;
    for (const auto& [k, x] : v.items()) {
      if (!first) s += ", ";
      first = false;
      s += ojson(k).dump() + ": " + python_json(x);
    }
    return s + "}";
  }
  if (v.is_array()) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + python_json(v[i]);
    return s + "]";
  }
  return v.dump();  // strings escape only '"', '\\' and control characters, as ensure_ascii=False does
}

std::string encode_messages(const ojson& messages, const EncodeOptions& options) {
  if (!messages.is_array()) fail("messages must be an array");
  for (size_t i = 0; i < messages.size(); ++i) {
    const ojson& m = messages[i];
    if (!m.is_object()) fail("messages[{}] must be an object", i);
    if (!m.contains("role") || !m["role"].is_string()) fail("messages[{}] has no string 'role'", i);
  }
  const long last_user = last_user_index(messages);
  if (options.thinking && options.drop_thinking) {
    // The reference drops developer turns before the last user turn here and then fails on the shortened list.
    for (long i = 0; i < last_user; ++i)
      if (messages[size_t(i)]["role"] == "developer")
        fail("messages[{}] (developer): only the last user turn may be a developer message in thinking mode", i);
  }
  // Dropping old reasoning changes nothing that is rendered: reasoning is only written after the last user turn.
  std::string prompt = options.add_bos ? std::string(kBos) : "";
  for (size_t i = 0; i < messages.size(); ++i) prompt += render_message(i, messages, options.thinking, last_user);
  return prompt;
}

std::string chat_prompt(const ojson& messages, const ojson& tools, bool thinking) {
  if (!messages.is_array() || messages.empty()) fail("messages must be a non-empty array");
  ojson all = ojson::array();
  if (tools.is_array() && !tools.empty()) all.push_back({{"role", "system"}, {"tools", tools}});
  for (const ojson& m : messages) all.push_back(m);
  const bool ends_with_user = all.back().is_object() && all.back().value("role", std::string()) == "user";
  return encode_messages(all, {.thinking = thinking, .drop_thinking = ends_with_user, .add_bos = true});
}

}  // namespace moe::dsv32
