#include "server/messages_request.h"

#include <set>

namespace moe::server {

using nlohmann::json;

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

const std::set<std::string> kFields = {"model", "max_tokens", "messages", "system", "stream", "temperature", "top_p",
                                       "top_k", "stop_sequences", "tools", "tool_choice", "thinking", "metadata",
                                       "service_tier"};

// Text of a string or an array of text blocks (what system prompts and tool results hold).
std::string block_text(const json& c, const std::string& param) {
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) bad(param, param + " must be a string or an array of text blocks");
  std::string out;
  for (size_t i = 0; i < c.size(); ++i) {
    const json& b = c[i];
    if (!b.is_object() || b.value("type", "") != "text" || !b.contains("text") || !b["text"].is_string())
      bad(param + "[" + std::to_string(i) + "]", param + "[" + std::to_string(i) + "] must be a text block");
    out += b["text"].get<std::string>();
  }
  return out;
}

// One Anthropic message -> OpenAI messages (a user turn's tool results become tool messages, before its text).
void translate_message(const json& m, size_t i, json& out) {
  const std::string p = "messages[" + std::to_string(i) + "]";
  if (!m.is_object()) bad(p, p + " must be an object");
  const std::string role = m.value("role", "");
  if (role != "user" && role != "assistant") bad(p + ".role", p + ".role must be \"user\" or \"assistant\"");
  if (!m.contains("content")) bad(p + ".content", p + " needs 'content'");
  const json& c = m["content"];
  if (c.is_string()) {
    out.push_back({{"role", role}, {"content", c}});
    return;
  }
  if (!c.is_array()) bad(p + ".content", p + ".content must be a string or an array of content blocks");
  std::string text;
  json calls = json::array();
  for (size_t k = 0; k < c.size(); ++k) {
    const json& b = c[k];
    const std::string bp = p + ".content[" + std::to_string(k) + "]";
    if (!b.is_object() || !b.contains("type") || !b["type"].is_string()) bad(bp, bp + " must be a block with a 'type'");
    const std::string type = b["type"].get<std::string>();
    if (type == "text") {
      if (!b.contains("text") || !b["text"].is_string()) bad(bp + ".text", bp + ".text must be a string");
      text += b["text"].get<std::string>();
    } else if (type == "tool_use" && role == "assistant") {
      if (!b.contains("id") || !b["id"].is_string() || !b.contains("name") || !b["name"].is_string() ||
          !b.contains("input") || !b["input"].is_object())
        bad(bp, bp + " (tool_use) needs a string 'id', a string 'name' and an object 'input'");
      calls.push_back({{"id", b["id"]}, {"type", "function"},
                       {"function", {{"name", b["name"]}, {"arguments", b["input"].dump()}}}});
    } else if (type == "tool_result" && role == "user") {
      if (!b.contains("tool_use_id") || !b["tool_use_id"].is_string())
        bad(bp + ".tool_use_id", bp + " (tool_result) needs a string 'tool_use_id'");
      std::string result = b.contains("content") ? block_text(b["content"], bp + ".content") : "";
      if (b.value("is_error", false)) result = "Error: " + result;
      out.push_back({{"role", "tool"}, {"tool_call_id", b["tool_use_id"]}, {"content", result}});
    } else if ((type == "thinking" || type == "redacted_thinking") && role == "assistant") {
      // Earlier reasoning is not sent back to the model (DeepSeek's templates drop it from the history).
    } else {
      bad(bp + ".type", bp + ": a '" + type + "' block is not supported in a " + role + " message");
    }
  }
  if (role == "assistant") {
    json a = {{"role", "assistant"}, {"content", text.empty() && !calls.empty() ? json(nullptr) : json(text)}};
    if (!calls.empty()) a["tool_calls"] = calls;
    out.push_back(std::move(a));
  } else if (!text.empty() || out.empty() || out.back()["role"] != "tool") {
    out.push_back({{"role", "user"}, {"content", text}});
  }
}

}  // namespace

json anthropic_error(const ApiError& e) {
  std::string type = "invalid_request_error";
  if (e.status == 401) type = "authentication_error";
  else if (e.status == 403) type = "permission_error";
  else if (e.status == 404) type = "not_found_error";
  else if (e.status == 413) type = "request_too_large";
  else if (e.status == 503) type = "overloaded_error";
  else if (e.status >= 500) type = "api_error";
  std::string msg = e.what();
  if (!e.param.empty() && msg.find(e.param) == std::string::npos) msg = e.param + ": " + msg;
  return {{"type", "error"}, {"error", {{"type", type}, {"message", msg}}}};
}

MessagesRequest parse_messages_request(std::string_view body, const SamplingParams& defaults) {
  const json b = parse_json_body(body);
  for (const auto& [key, v] : b.items())
    if (!kFields.count(key))
      throw ApiError(400, key + ": Extra inputs are not permitted (this server refuses fields it does not implement)",
                     key, "unknown_parameter");
  json o = json::object();  // the OpenAI chat request
  if (b.contains("model")) o["model"] = b["model"];
  if (!b.contains("max_tokens")) bad("max_tokens", "max_tokens: Field required");
  o["max_tokens"] = b["max_tokens"];
  for (const char* k : {"stream", "temperature", "top_p", "top_k"})
    if (b.contains(k)) o[k] = b[k];
  if (b.contains("temperature") && b["temperature"].is_number() &&
      (b["temperature"].get<double>() < 0 || b["temperature"].get<double>() > 1))
    bad("temperature", "temperature: must be between 0 and 1");
  if (b.contains("stop_sequences")) o["stop"] = b["stop_sequences"];
  json msgs = json::array();
  if (b.contains("system") && !b["system"].is_null())
    msgs.push_back({{"role", "system"}, {"content", block_text(b["system"], "system")}});
  if (!b.contains("messages") || !b["messages"].is_array() || b["messages"].empty())
    bad("messages", "messages: must be a non-empty array");
  for (size_t i = 0; i < b["messages"].size(); ++i) translate_message(b["messages"][i], i, msgs);
  // A last assistant turn is a prefill: the reply continues it.
  if (msgs.back()["role"] == "assistant" && msgs.back()["content"].is_string()) msgs.back()["prefix"] = true;
  o["messages"] = std::move(msgs);
  if (b.contains("tools") && !b["tools"].is_null()) {
    if (!b["tools"].is_array()) bad("tools", "tools: must be an array");
    json tools = json::array();
    for (size_t i = 0; i < b["tools"].size(); ++i) {
      const json& t = b["tools"][i];
      const std::string p = "tools[" + std::to_string(i) + "]";
      if (!t.is_object() || !t.contains("name")) bad(p, p + " must be an object with a 'name'");
      if (t.contains("type") && t["type"] != "custom")
        bad(p + ".type", p + ": only custom tools (name, description, input_schema) are supported");
      if (!t.contains("input_schema")) bad(p + ".input_schema", p + ".input_schema: Field required");
      json f = {{"name", t["name"]}, {"parameters", t["input_schema"]}};
      if (t.contains("description")) f["description"] = t["description"];
      tools.push_back({{"type", "function"}, {"function", f}});
    }
    o["tools"] = std::move(tools);
  }
  if (b.contains("tool_choice") && !b["tool_choice"].is_null()) {
    const json& tc = b["tool_choice"];
    const std::string type = tc.is_object() ? tc.value("type", "") : "";
    if (type == "auto") o["tool_choice"] = "auto";
    else if (type == "any") o["tool_choice"] = "required";
    else if (type == "none") o["tool_choice"] = "none";
    else if (type == "tool" && tc.contains("name")) o["tool_choice"] = {{"type", "function"}, {"function", {{"name", tc["name"]}}}};
    else bad("tool_choice", "tool_choice: must be {\"type\": \"auto\" | \"any\" | \"none\"} or {\"type\": \"tool\", \"name\"}");
    if (tc.value("disable_parallel_tool_use", false)) o["parallel_tool_calls"] = false;
  }
  if (b.contains("thinking") && !b["thinking"].is_null()) {
    const json& t = b["thinking"];
    const std::string type = t.is_object() ? t.value("type", "") : "";
    if (type != "enabled" && type != "disabled") bad("thinking", "thinking: 'type' must be \"enabled\" or \"disabled\"");
    o["chat_template_kwargs"] = {{"thinking", type == "enabled"}};
  }
  MessagesRequest r;
  try {
    r.chat = parse_chat_request(o.dump(), defaults);
  } catch (ApiError& e) {
    // Name Anthropic's fields, not their OpenAI translation.
    std::string param = e.param, msg = e.what();
    for (auto [from, to] : {std::pair<std::string, std::string>{".function.parameters", ".input_schema"},
                            {".function.name", ".name"}, {"stop", "stop_sequences"}}) {
      if (param.find(from) != std::string::npos && (from != "stop" || param == "stop")) {
        param.replace(param.find(from), from.size(), to);
        for (size_t at; (at = msg.find(from)) != std::string::npos;) msg.replace(at, from.size(), to);
      }
    }
    throw ApiError(e.status, msg, param, e.code, e.type);
  }
  return r;
}

}  // namespace moe::server
