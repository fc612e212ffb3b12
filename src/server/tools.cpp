#include "server/tools.h"

#include "server/api.h"

namespace moe::server {

using nlohmann::json;

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) { throw ApiError(400, message, param); }

bool known_type(const json& t) {
  static const char* names[] = {"object", "array", "string", "number", "integer", "boolean", "null"};
  if (!t.is_string()) return false;
  for (const char* n : names)
    if (t == n) return true;
  return false;
}

}  // namespace

void check_schema(const json& s, const std::string& param, int depth) {
  if (depth > 32) bad(param, param + ": the schema is nested deeper than 32 levels");
  if (s.is_boolean()) return;  // true / false are schemas
  if (!s.is_object()) bad(param, param + " must be a JSON Schema object");
  if (s.contains("type")) {
    const json& t = s["type"];
    if (t.is_array()) {
      if (t.empty()) bad(param + ".type", param + ".type must not be an empty array");
      for (const auto& x : t)
        if (!known_type(x)) bad(param + ".type", param + ".type names an unknown type: " + x.dump());
    } else if (!known_type(t)) {
      bad(param + ".type", param + ".type must be one of object, array, string, number, integer, boolean, null (got " +
                               t.dump() + ")");
    }
  }
  if (s.contains("properties")) {
    if (!s["properties"].is_object()) bad(param + ".properties", param + ".properties must be an object of schemas");
    for (const auto& [k, v] : s["properties"].items()) check_schema(v, param + ".properties." + k, depth + 1);
  }
  if (s.contains("required")) {
    const json& r = s["required"];
    if (!r.is_array()) bad(param + ".required", param + ".required must be an array of property names");
    for (const auto& x : r)
      if (!x.is_string()) bad(param + ".required", param + ".required must be an array of property names");
  }
  if (s.contains("items")) check_schema(s["items"], param + ".items", depth + 1);
  if (s.contains("enum") && (!s["enum"].is_array() || s["enum"].empty()))
    bad(param + ".enum", param + ".enum must be a non-empty array");
  for (const char* key : {"anyOf", "oneOf", "allOf"}) {
    if (!s.contains(key)) continue;
    const json& a = s[key];
    if (!a.is_array() || a.empty()) bad(param + "." + key, param + "." + key + " must be a non-empty array of schemas");
    for (size_t i = 0; i < a.size(); ++i) check_schema(a[i], param + "." + key + "[" + std::to_string(i) + "]", depth + 1);
  }
  if (s.contains("additionalProperties") && !s["additionalProperties"].is_boolean())
    check_schema(s["additionalProperties"], param + ".additionalProperties", depth + 1);
}

json validate_tools(const json& tools) {
  if (!tools.is_array()) bad("tools", "'tools' must be an array");
  if (tools.size() > 128) bad("tools", "'tools' may hold at most 128 tools");
  json out = json::array();
  for (size_t i = 0; i < tools.size(); ++i) {
    const std::string p = "tools[" + std::to_string(i) + "]";
    const json& t = tools[i];
    if (!t.is_object()) bad(p, p + " must be an object");
    if (!t.contains("type") || t["type"] != "function")
      bad(p + ".type", p + ".type must be \"function\" (the only tool type this server supports)");
    if (!t.contains("function") || !t["function"].is_object()) bad(p + ".function", p + " needs a 'function' object");
    const json& f = t["function"];
    if (!f.contains("name") || !f["name"].is_string()) bad(p + ".function.name", p + ".function.name must be a string");
    const std::string name = f["name"].get<std::string>();
    // OpenAI's rule: a-z, A-Z, 0-9, underscores and dashes, at most 64 characters.
    bool ok = !name.empty() && name.size() <= 64;
    for (char c : name) ok = ok && (std::isalnum((unsigned char)c) || c == '_' || c == '-');
    if (!ok)
      bad(p + ".function.name", p + ".function.name '" + name +
                                    "' must be 1-64 characters of a-z, A-Z, 0-9, underscores and dashes");
    for (const auto& prev : out)
      if (prev["function"]["name"] == name) bad(p + ".function.name", "two tools are named '" + name + "'");
    if (f.contains("description") && !f["description"].is_null() && !f["description"].is_string())
      bad(p + ".function.description", p + ".function.description must be a string");
    json fn = {{"name", name}};
    if (f.contains("description") && f["description"].is_string()) fn["description"] = f["description"];
    if (f.contains("parameters") && !f["parameters"].is_null()) {
      check_schema(f["parameters"], p + ".function.parameters");
      if (f["parameters"].is_object() && f["parameters"].contains("type") && f["parameters"]["type"] != "object")
        bad(p + ".function.parameters.type", p + ".function.parameters must describe an object (type \"object\")");
      fn["parameters"] = f["parameters"];
    } else {
      fn["parameters"] = {{"type", "object"}, {"properties", json::object()}};
    }
    if (f.contains("strict") && !f["strict"].is_null()) {
      if (!f["strict"].is_boolean()) bad(p + ".function.strict", p + ".function.strict must be a boolean");
      fn["strict"] = f["strict"];
    }
    out.push_back({{"type", "function"}, {"function", std::move(fn)}});
  }
  return out;
}

const json* find_tool(const json& tools, std::string_view name) {
  if (!tools.is_array()) return nullptr;
  for (const auto& t : tools)
    if (t["function"]["name"] == name) return &t["function"];
  return nullptr;
}

ToolChoice parse_tool_choice(const json* c, const json& tools) {
  ToolChoice tc;
  const bool have = tools.is_array() && !tools.empty();
  if (!c || c->is_null()) {
    tc.mode = have ? ToolChoice::Mode::automatic : ToolChoice::Mode::none;
    return tc;
  }
  if (c->is_string()) {
    const std::string s = c->get<std::string>();
    if (s == "none") tc.mode = ToolChoice::Mode::none;
    else if (s == "auto") tc.mode = ToolChoice::Mode::automatic;
    else if (s == "required") tc.mode = ToolChoice::Mode::required;
    else bad("tool_choice", "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}} (got \"" + s + "\")");
  } else if (c->is_object()) {
    if (!c->contains("type") || (*c)["type"] != "function" || !c->contains("function") || !(*c)["function"].is_object() ||
        !(*c)["function"].contains("name") || !(*c)["function"]["name"].is_string())
      bad("tool_choice", "'tool_choice' as an object must be {\"type\": \"function\", \"function\": {\"name\": ...}}");
    tc.mode = ToolChoice::Mode::named;
    tc.name = (*c)["function"]["name"].get<std::string>();
  } else {
    bad("tool_choice", "'tool_choice' must be a string or an object");
  }
  if (tc.mode != ToolChoice::Mode::none && tc.mode != ToolChoice::Mode::automatic && !have)
    bad("tool_choice", "'tool_choice' requires 'tools'");
  if (tc.mode == ToolChoice::Mode::named && !find_tool(tools, tc.name))
    bad("tool_choice", "'tool_choice' names the function '" + tc.name + "', which is not among 'tools'");
  return tc;
}

ToolCallFormat tool_call_format(std::string_view src) {
  // V3/R1 templates put a ```json fence around the arguments; V3.1's put the arguments right after the separator.
  if (src.find("```json") != std::string_view::npos) return ToolCallFormat::v3;
  if (src.find("tool▁sep") != std::string_view::npos) return ToolCallFormat::v31;
  return ToolCallFormat::v3;
}

bool template_renders_tools(std::string_view src) {
  // A template that uses the `tools` variable (V3.1, R1-0528) describes the tools itself.
  for (std::string_view needle : {"tools %}", "in tools", "tools is defined", "tools|", "tools |"})
    if (src.find(needle) != std::string_view::npos) return true;
  return false;
}

std::string render_tool_call(std::string_view name, std::string_view arguments, ToolCallFormat format) {
  std::string s(kToolCallBegin);
  if (format == ToolCallFormat::v3) {
    s += "function";
    s += kToolSep;
    s += name;
    s += "\n```json\n";
    s += arguments;
    s += "\n```";
  } else {
    s += name;
    s += kToolSep;
    s += arguments;
  }
  s += kToolCallEnd;
  return s;
}

std::string tools_system_prompt(const json& tools, ToolCallFormat format) {
  std::string s = "## Tools\nYou can call these functions:\n";
  for (const auto& t : tools) {
    const json& f = t["function"];
    s += "\n### " + f["name"].get<std::string>() + "\n";
    if (f.contains("description")) s += "Description: " + f["description"].get<std::string>() + "\n";
    s += "Parameters (JSON Schema): " + f["parameters"].dump() + "\n";
  }
  s += "\nTo call functions, answer with exactly this and nothing else:\n";
  s += std::string(kToolCallsBegin) + render_tool_call("FUNCTION_NAME", "ARGUMENTS_AS_JSON", format) +
       "...one such block per call..." + std::string(kToolCallsEnd) + "\n";
  s += "The arguments are one JSON object that matches the function's parameter schema. Otherwise answer normally.";
  return s;
}

json messages_with_tools(json messages, const json& tools, ToolCallFormat format) {
  const std::string prompt = tools_system_prompt(tools, format);
  for (auto& m : messages)
    if (m["role"] == "system") {
      m["content"] = m["content"].get<std::string>() + "\n\n" + prompt;
      return messages;
    }
  messages.insert(messages.begin(), json{{"role", "system"}, {"content", prompt}});
  return messages;
}

}  // namespace moe::server
