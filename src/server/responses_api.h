#pragma once
// OpenAI's Responses API (POST /v1/responses) on the chat engine. A request (input as a string or as items:
// messages, function_call, function_call_output; instructions; function tools) is translated into the equivalent
// chat request and validated by the same parser; the reply comes back as output items (reasoning, message with
// output_text, function_call), whole or as the documented stream of events: response.created,
// response.in_progress, then per item response.output_item.added, its content events (content_part.added,
// output_text.delta..., output_text.done, content_part.done / function_call_arguments.delta..., .done /
// reasoning_text.delta..., .done), response.output_item.done, and response.completed (or response.incomplete when
// max_output_tokens ran out). Every event carries a sequence_number.
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>
#include <vector>

#include "server/api.h"
#include "server/choice_assembler.h"
#include "server/responses_request.h"

namespace moe::server {

class ResponsesAssembler {
 public:
  ResponsesAssembler(const Tokenizer& tok, std::string id, std::string model, int64_t created, int32_t input_tokens,
                     nlohmann::json echo, ChoiceOptions options);

  struct Event {
    std::string name;
    nlohmann::json data;
  };
  std::vector<Event> start();                         // response.created, response.in_progress
  std::vector<Event> feed(const GenerationEvent& e);  // item events; at the end response.completed / .incomplete
  bool done() const { return choice_.finished(); }
  bool failed() const { return choice_.failed(); }
  ApiError failure() const { return choice_.failure(); }
  nlohmann::json response() const;  // the response object (status from the state)

 private:
  enum class Item { none, reasoning, message, function_call };
  Event event(const std::string& type, nlohmann::json fields);
  void open(Item kind, std::vector<Event>& out, const ToolCallDelta* call = nullptr);
  void close(std::vector<Event>& out);

  ChoiceAssembler choice_;
  std::string id_, model_;
  int64_t created_;
  int32_t input_tokens_;
  int32_t cached_tokens_ = 0;  // as the latest event reports
  nlohmann::json echo_;
  Item open_ = Item::none;
  int64_t seq_ = 0;
  nlohmann::json output_ = nlohmann::json::array();
};

}  // namespace moe::server
