#include "server/responses_request.h"

#include <set>

namespace moe::server {

using nlohmann::json;

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

const std::set<std::string> kFields = {"model", "input", "instructions", "max_output_tokens", "temperature", "top_p",
                                       "stream", "tools", "tool_choice", "parallel_tool_calls", "text", "user",
                                       "metadata", "store", "service_tier", "truncation", "include"};

std::string content_text(const json& c, const std::string& p) {
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) bad(p, p + " must be a string or an array of input_text parts");
  std::string out;
  for (size_t i = 0; i < c.size(); ++i) {
    const json& part = c[i];
    const std::string pp = p + "[" + std::to_string(i) + "]";
    const std::string type = part.is_object() ? part.value("type", "") : "";
    if (type != "input_text" && type != "output_text" && type != "text")
      bad(pp + ".type", pp + ": only text parts (input_text, output_text) are supported, got '" + type + "'");
    if (!part.contains("text") || !part["text"].is_string()) bad(pp + ".text", pp + ".text must be a string");
    out += part["text"].get<std::string>();
  }
  return out;
}

json translate_input(const json& input) {
  json msgs = json::array();
  if (input.is_string()) {
    msgs.push_back({{"role", "user"}, {"content", input}});
    return msgs;
  }
  if (!input.is_array() || input.empty()) bad("input", "'input' must be a string or a non-empty array of items");
  for (size_t i = 0; i < input.size(); ++i) {
    const json& it = input[i];
    const std::string p = "input[" + std::to_string(i) + "]";
    if (!it.is_object()) bad(p, p + " must be an object");
    const std::string type = it.value("type", it.contains("role") ? "message" : "");
    if (type == "message") {
      const std::string role = it.value("role", "");
      if (role != "user" && role != "assistant" && role != "system" && role != "developer")
        bad(p + ".role", p + ".role must be user, assistant, system or developer");
      if (!it.contains("content")) bad(p + ".content", p + " needs 'content'");
      msgs.push_back({{"role", role}, {"content", content_text(it["content"], p + ".content")}});
    } else if (type == "function_call") {
      for (const char* k : {"call_id", "name", "arguments"})
        if (!it.contains(k) || !it[k].is_string()) bad(p + "." + k, p + " (function_call) needs a string '" + k + "'");
      json call = {{"id", it["call_id"]}, {"type", "function"},
                   {"function", {{"name", it["name"]}, {"arguments", it["arguments"]}}}};
      if (!msgs.empty() && msgs.back()["role"] == "assistant" && msgs.back().contains("tool_calls"))
        msgs.back()["tool_calls"].push_back(std::move(call));  // parallel calls: one assistant turn
      else
        msgs.push_back({{"role", "assistant"}, {"content", nullptr}, {"tool_calls", json::array({std::move(call)})}});
    } else if (type == "function_call_output") {
      if (!it.contains("call_id") || !it["call_id"].is_string()) bad(p + ".call_id", p + " needs a string 'call_id'");
      if (!it.contains("output")) bad(p + ".output", p + " needs 'output'");
      msgs.push_back({{"role", "tool"}, {"tool_call_id", it["call_id"]},
                      {"content", content_text(it["output"], p + ".output")}});
    } else if (type == "reasoning") {
      // Earlier reasoning is not sent back to the model (DeepSeek's templates drop it).
    } else {
      bad(p + ".type", p + ": items of type '" + type + "' are not supported");
    }
  }
  return msgs;
}

}  // namespace

ResponsesRequest parse_responses_request(std::string_view body, const SamplingParams& defaults) {
  const json b = parse_json_body(body);
  for (const auto& [key, v] : b.items()) {
    if (kFields.count(key)) continue;
    if (key == "previous_response_id" || key == "conversation")
      throw ApiError(400, "'" + key + "' is not supported: this server stores no responses; send the whole input",
                     key, "unsupported_parameter");
    throw ApiError(400, "Unrecognized request argument supplied: '" + key + "' (see docs/server.md)", key,
                   "unknown_parameter");
  }
  json o = json::object();
  ResponsesRequest r;
  r.echo = json::object();
  for (const char* k : {"model", "temperature", "top_p", "stream", "parallel_tool_calls", "user", "metadata"})
    if (b.contains(k)) o[k] = b[k];
  if (b.contains("parallel_tool_calls")) r.echo["parallel_tool_calls"] = b["parallel_tool_calls"];
  if (b.contains("max_output_tokens") && !b["max_output_tokens"].is_null()) o["max_tokens"] = b["max_output_tokens"];
  if (!b.contains("input")) bad("input", "'input' is required");
  json msgs = translate_input(b["input"]);
  if (b.contains("instructions") && !b["instructions"].is_null()) {
    if (!b["instructions"].is_string()) bad("instructions", "'instructions' must be a string");
    msgs.insert(msgs.begin(), json{{"role", "system"}, {"content", b["instructions"]}});
    r.echo["instructions"] = b["instructions"];
  }
  o["messages"] = std::move(msgs);
  if (b.contains("tools") && !b["tools"].is_null()) {
    if (!b["tools"].is_array()) bad("tools", "'tools' must be an array");
    json tools = json::array();
    for (size_t i = 0; i < b["tools"].size(); ++i) {
      const json& t = b["tools"][i];
      const std::string p = "tools[" + std::to_string(i) + "]";
      if (!t.is_object() || t.value("type", "") != "function")
        bad(p + ".type", p + ": only function tools are supported");
      json f = json::object();
      for (const char* k : {"name", "description", "parameters", "strict"})
        if (t.contains(k)) f[k] = t[k];
      tools.push_back({{"type", "function"}, {"function", std::move(f)}});
    }
    o["tools"] = std::move(tools);
    r.echo["tools"] = b["tools"];
  }
  if (b.contains("tool_choice") && !b["tool_choice"].is_null()) {
    const json& tc = b["tool_choice"];
    if (tc.is_object() && tc.value("type", "") == "function" && tc.contains("name"))
      o["tool_choice"] = {{"type", "function"}, {"function", {{"name", tc["name"]}}}};
    else
      o["tool_choice"] = tc;
    r.echo["tool_choice"] = tc;
  }
  if (b.contains("text") && !b["text"].is_null()) {
    const json& t = b["text"];
    if (!t.is_object()) bad("text", "'text' must be an object");
    for (const auto& [k, v] : t.items())
      if (k != "format" && k != "verbosity") bad("text." + k, "'text." + k + "' is not supported");
    if (t.contains("format")) {
      const json& f = t["format"];
      if (!f.is_object() || !f.contains("type")) bad("text.format", "'text.format' must be an object with a 'type'");
      if (f["type"] != "text") {  // structured output: chat completions' response_format
        json rf = {{"type", f["type"]}};
        if (f["type"] == "json_schema") {
          json js = f;
          js.erase("type");
          rf["json_schema"] = js;
        }
        o["response_format"] = rf;
      }
    }
    r.echo["text"] = t;
  }
  try {
    r.chat = parse_chat_request(o.dump(), defaults);
  } catch (ApiError& e) {
    std::string param = e.param, msg = e.what();
    for (auto [from, to] : {std::pair<std::string, std::string>{".function.", "."}, {"max_tokens", "max_output_tokens"}}) {
      if (param.find(from) == std::string::npos) continue;
      param.replace(param.find(from), from.size(), to);
      for (size_t at; (at = msg.find(from)) != std::string::npos;) msg.replace(at, from.size(), to);
    }
    throw ApiError(e.status, msg, param, e.code, e.type);
  }
  return r;
}

}  // namespace moe::server
