#pragma once
// Anthropic's Messages API (POST /v1/messages) on the chat engine. A request is translated into the equivalent
// OpenAI chat request (system prompt, text / tool_use / tool_result blocks, tools with input_schema, tool_choice,
// thinking, stop_sequences) and validated by the same parser, so both APIs accept and refuse the same things; the
// reply comes back as Anthropic content blocks (thinking from the reasoning section, text, tool_use), whole or as
// the documented stream of events:
//   message_start, then per block content_block_start, content_block_delta..., content_block_stop, then
//   message_delta (stop_reason, output usage) and message_stop.
// Errors use Anthropic's shape: {"type": "error", "error": {"type", "message"}}.
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>
#include <vector>

#include "server/api.h"
#include "server/choice_assembler.h"
#include "server/messages_request.h"

namespace moe::server {

class MessagesAssembler {
 public:
  // options: the chat choice options (reasoning split, tools); tool ids are "toolu_" + id_suffix + index.
  MessagesAssembler(const Tokenizer& tok, std::string id, std::string model, int32_t input_tokens,
                    ChoiceOptions options);

  struct Event {
    std::string name;
    nlohmann::json data;
  };
  std::vector<Event> start() const;                   // message_start
  std::vector<Event> feed(const GenerationEvent& e);  // block events; at the end message_delta and message_stop
  bool done() const { return choice_.finished(); }
  bool failed() const { return choice_.failed(); }
  ApiError failure() const { return choice_.failure(); }
  nlohmann::json message() const;  // the whole response, once done()

 private:
  enum class Block { none, thinking, text, tool_use };
  void open(Block b, std::vector<Event>& out, const ToolCallDelta* call = nullptr);
  void close(std::vector<Event>& out);
  std::string stop_reason() const;

  ChoiceAssembler choice_;
  std::string id_, model_;
  int32_t input_tokens_;
  Block open_ = Block::none;
  int index_ = -1;
  nlohmann::json blocks_ = nlohmann::json::array();  // the whole message's content; tool_use input as streamed text
};

}  // namespace moe::server
