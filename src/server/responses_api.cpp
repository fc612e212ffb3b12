#include "server/responses_api.h"

namespace moe::server {

using nlohmann::json;

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
  // cached_tokens: prompt tokens whose latents came from the prefix cache; reasoning_tokens: the reply's tokens
  // inside <think> ... </think> (both as the engine's events and the assembler counted them).
  r["usage"] = finished ? json{{"input_tokens", input_tokens_},
                               {"input_tokens_details", {{"cached_tokens", cached_tokens_}}},
                               {"output_tokens", out},
                               {"output_tokens_details", {{"reasoning_tokens", choice_.reasoning_tokens()}}},
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
  cached_tokens_ = e.cached_tokens;
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
