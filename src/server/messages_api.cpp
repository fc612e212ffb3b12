#include "server/messages_api.h"

namespace moe::server {

using nlohmann::json;

MessagesAssembler::MessagesAssembler(const Tokenizer& tok, std::string id, std::string model, int32_t input_tokens,
                                     ChoiceOptions options)
    : choice_(tok, 0, std::move(options)), id_(std::move(id)), model_(std::move(model)), input_tokens_(input_tokens) {}

std::vector<MessagesAssembler::Event> MessagesAssembler::start() const {
  return {{"message_start",
          {{"type", "message_start"},
           {"message",
            {{"id", id_}, {"type", "message"}, {"role", "assistant"}, {"model", model_}, {"content", json::array()},
             {"stop_reason", nullptr}, {"stop_sequence", nullptr},
             {"usage", {{"input_tokens", input_tokens_}, {"output_tokens", 0}}}}}}}};
}

void MessagesAssembler::close(std::vector<Event>& out) {
  if (open_ == Block::none) return;
  out.push_back({"content_block_stop", {{"type", "content_block_stop"}, {"index", index_}}});
  open_ = Block::none;
}

void MessagesAssembler::open(Block b, std::vector<Event>& out, const ToolCallDelta* call) {
  if (open_ == b && b != Block::tool_use) return;
  close(out);
  open_ = b;
  ++index_;
  json block;
  if (b == Block::thinking) block = {{"type", "thinking"}, {"thinking", ""}, {"signature", ""}};
  else if (b == Block::text) block = {{"type", "text"}, {"text", ""}};
  else block = {{"type", "tool_use"}, {"id", call->id}, {"name", call->name}, {"input", json::object()}};
  blocks_.push_back(block);
  if (b == Block::tool_use) blocks_.back()["input"] = "";  // the arguments' text until the end
  out.push_back({"content_block_start", {{"type", "content_block_start"}, {"index", index_}, {"content_block", block}}});
}

std::string MessagesAssembler::stop_reason() const {
  if (choice_.finish_reason() == FinishReason::length) return "max_tokens";
  return choice_.tool_calls().empty() ? "end_turn" : "tool_use";
}

std::vector<MessagesAssembler::Event> MessagesAssembler::feed(const GenerationEvent& e) {
  std::vector<Event> out;
  if (choice_.finished()) return out;
  const auto d = choice_.feed(e);
  if (choice_.failed()) return out;
  auto delta = [&](json inner) {
    out.push_back({"content_block_delta", {{"type", "content_block_delta"}, {"index", index_}, {"delta", std::move(inner)}}});
  };
  if (!d.reasoning.empty()) {
    open(Block::thinking, out);
    blocks_.back()["thinking"] = blocks_.back()["thinking"].get<std::string>() + d.reasoning;
    delta({{"type", "thinking_delta"}, {"thinking", d.reasoning}});
  }
  if (!d.content.empty()) {
    open(Block::text, out);
    blocks_.back()["text"] = blocks_.back()["text"].get<std::string>() + d.content;
    delta({{"type", "text_delta"}, {"text", d.content}});
  }
  for (const auto& c : d.tool_calls) {
    if (!c.id.empty()) open(Block::tool_use, out, &c);
    if (c.arguments.empty()) continue;
    blocks_.back()["input"] = blocks_.back()["input"].get<std::string>() + c.arguments;
    delta({{"type", "input_json_delta"}, {"partial_json", c.arguments}});
  }
  if (choice_.finished()) {
    close(out);
    out.push_back({"message_delta",
                   {{"type", "message_delta"},
                    {"delta", {{"stop_reason", stop_reason()}, {"stop_sequence", nullptr}}},
                    {"usage", {{"output_tokens", choice_.completion_tokens()}}}}});
    out.push_back({"message_stop", {{"type", "message_stop"}}});
  }
  return out;
}

json MessagesAssembler::message() const {
  json content = blocks_;
  for (auto& b : content)
    if (b["type"] == "tool_use") {
      // The streamed arguments' text as an object; a call cut short by max_tokens keeps an empty input.
      const json parsed = json::parse(b["input"].get<std::string>(), nullptr, false);
      b["input"] = parsed.is_object() ? parsed : json::object();
    }
  return {{"id", id_}, {"type", "message"}, {"role", "assistant"}, {"model", model_}, {"content", content},
          {"stop_reason", stop_reason()}, {"stop_sequence", nullptr},
          {"usage", {{"input_tokens", input_tokens_}, {"output_tokens", choice_.completion_tokens()}}}};
}

}  // namespace moe::server
