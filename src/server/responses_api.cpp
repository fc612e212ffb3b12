#include "server/responses_api.h"

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

ResponsesRequest parse_responses_request(std::string_view body) {
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
    r.chat = parse_chat_request(o.dump());
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

ResponsesAssembler::ResponsesAssembler(const Tokenizer& tok, std::string id, std::string model, int64_t created,
                                       int32_t input_tokens, json echo, ChoiceOptions options)
    : choice_(tok, 0, std::move(options)),
      id_(std::move(id)),
      model_(std::move(model)),
      created_(created),
      input_tokens_(input_tokens),
      echo_(std::move(echo)) {}

ResponsesAssembler::Event ResponsesAssembler::event(const std::string& type, json fields) {
  fields["type"] = type;
  fields["sequence_number"] = seq_++;
  return {type, std::move(fields)};
}

json ResponsesAssembler::response() const {
  const bool finished = choice_.finished();
  const bool cut = choice_.finish_reason() == FinishReason::length;
  json r = {{"id", id_}, {"object", "response"}, {"created_at", created_}, {"model", model_},
            {"status", !finished ? "in_progress" : cut ? "incomplete" : "completed"},
            {"error", nullptr},
            {"incomplete_details", cut ? json{{"reason", "max_output_tokens"}} : json(nullptr)},
            {"output", output_},
            {"parallel_tool_calls", echo_.value("parallel_tool_calls", true)},
            {"tool_choice", echo_.value("tool_choice", json("auto"))},
            {"tools", echo_.value("tools", json::array())},
            {"instructions", echo_.value("instructions", json(nullptr))},
            {"text", echo_.value("text", json{{"format", {{"type", "text"}}}})},
            {"metadata", json::object()}};
  const int32_t out = choice_.completion_tokens();
  r["usage"] = finished ? json{{"input_tokens", input_tokens_}, {"input_tokens_details", {{"cached_tokens", 0}}},
                               {"output_tokens", out}, {"output_tokens_details", {{"reasoning_tokens", 0}}},
                               {"total_tokens", input_tokens_ + out}}
                        : json(nullptr);
  return r;
}

std::vector<ResponsesAssembler::Event> ResponsesAssembler::start() {
  std::vector<Event> out;
  out.push_back(event("response.created", {{"response", response()}}));
  out.push_back(event("response.in_progress", {{"response", response()}}));
  return out;
}

void ResponsesAssembler::open(Item kind, std::vector<Event>& out, const ToolCallDelta* call) {
  if (open_ == kind && kind != Item::function_call) return;
  close(out);
  open_ = kind;
  const int index = int(output_.size());
  const std::string suffix = id_.substr(id_.size() - 8) + "_" + std::to_string(index);
  json item;
  if (kind == Item::reasoning) {
    item = {{"type", "reasoning"}, {"id", "rs_" + suffix}, {"summary", json::array()}, {"content", json::array()}};
  } else if (kind == Item::message) {
    item = {{"type", "message"}, {"id", "msg_" + suffix}, {"status", "in_progress"}, {"role", "assistant"},
            {"content", json::array()}};
  } else {
    item = {{"type", "function_call"}, {"id", "fc_" + suffix}, {"call_id", call->id}, {"name", call->name},
            {"arguments", ""}, {"status", "in_progress"}};
  }
  output_.push_back(item);
  out.push_back(event("response.output_item.added", {{"output_index", index}, {"item", item}}));
  const json part = kind == Item::reasoning ? json{{"type", "reasoning_text"}, {"text", ""}}
                                            : json{{"type", "output_text"}, {"text", ""}, {"annotations", json::array()}};
  if (kind != Item::function_call) {
    output_.back()["content"].push_back(part);
    if (kind == Item::message)
      out.push_back(event("response.content_part.added",
                          {{"item_id", item["id"]}, {"output_index", index}, {"content_index", 0}, {"part", part}}));
  }
}

void ResponsesAssembler::close(std::vector<Event>& out) {
  if (open_ == Item::none) return;
  const int index = int(output_.size()) - 1;
  json& item = output_.back();
  const json id = item["id"];
  if (open_ == Item::message) {
    const json& part = item["content"][0];
    out.push_back(event("response.output_text.done",
                        {{"item_id", id}, {"output_index", index}, {"content_index", 0}, {"text", part["text"]}}));
    out.push_back(event("response.content_part.done",
                        {{"item_id", id}, {"output_index", index}, {"content_index", 0}, {"part", part}}));
    item["status"] = "completed";
  } else if (open_ == Item::reasoning) {
    out.push_back(event("response.reasoning_text.done", {{"item_id", id}, {"output_index", index}, {"content_index", 0},
                                                         {"text", item["content"][0]["text"]}}));
  } else {
    out.push_back(event("response.function_call_arguments.done",
                        {{"item_id", id}, {"output_index", index}, {"arguments", item["arguments"]}}));
    item["status"] = "completed";
  }
  out.push_back(event("response.output_item.done", {{"output_index", index}, {"item", item}}));
  open_ = Item::none;
}

std::vector<ResponsesAssembler::Event> ResponsesAssembler::feed(const GenerationEvent& e) {
  std::vector<Event> out;
  if (choice_.finished()) return out;
  const auto d = choice_.feed(e);
  if (choice_.failed()) return out;
  auto append = [](json& s, const std::string& piece) { s = s.get<std::string>() + piece; };
  if (!d.reasoning.empty()) {
    open(Item::reasoning, out);
    append(output_.back()["content"][0]["text"], d.reasoning);
    out.push_back(event("response.reasoning_text.delta", {{"item_id", output_.back()["id"]},
                                                          {"output_index", output_.size() - 1},
                                                          {"content_index", 0}, {"delta", d.reasoning}}));
  }
  if (!d.content.empty()) {
    open(Item::message, out);
    append(output_.back()["content"][0]["text"], d.content);
    out.push_back(event("response.output_text.delta", {{"item_id", output_.back()["id"]},
                                                       {"output_index", output_.size() - 1}, {"content_index", 0},
                                                       {"delta", d.content}, {"logprobs", json::array()}}));
  }
  for (const auto& c : d.tool_calls) {
    if (!c.id.empty()) open(Item::function_call, out, &c);
    if (c.arguments.empty()) continue;
    append(output_.back()["arguments"], c.arguments);
    out.push_back(event("response.function_call_arguments.delta",
                        {{"item_id", output_.back()["id"]}, {"output_index", output_.size() - 1}, {"delta", c.arguments}}));
  }
  if (choice_.finished()) {
    close(out);
    const bool cut = choice_.finish_reason() == FinishReason::length;
    out.push_back(event(cut ? "response.incomplete" : "response.completed", {{"response", response()}}));
  }
  return out;
}

}  // namespace moe::server
