#pragma once
// DeepSeek-V3.2's tool calls in the model's output ("DSML", see tokenizer/dsv32_encoding.h) -> OpenAI tool calls,
// incrementally, with the same contract as ToolCallParser (which forwards to this for ToolCallFormat::dsml): text is
// fed as it streams, tags may be split anywhere, nothing is lost or repeated.
//
//   CONTENT\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name="F">\n
//   <｜DSML｜parameter name="K" string="true">TEXT</｜DSML｜parameter>\n         (a string, written as is)
//   <｜DSML｜parameter name="N" string="false">JSON</｜DSML｜parameter>\n        (a number, bool, array, object)
//   </｜DSML｜invoke>\n...more invokes...</｜DSML｜function_calls>
//
// Arguments come out as the JSON object DeepSeek's decoder makes of them ({"K": "TEXT", "N": JSON}, ", " and ": "
// separators): a string value is JSON-escaped byte by byte as it streams (only ASCII is escaped, so a UTF-8
// character split across pieces is never broken), a non-string value is passed through. The "\n\n" before the
// block is not content. Markup that breaks the format ends the call (its arguments closed) and the rest is content.
#include <string>
#include <string_view>
#include <vector>

#include "server/tool_call_parser.h"

namespace moe::server {

class DsmlParser {
 public:
  explicit DsmlParser(std::string id_prefix) : id_prefix_(std::move(id_prefix)) {}
  void feed(std::string_view text, ToolCallParser::Out& out);
  void flush(ToolCallParser::Out& out);
  const std::vector<ToolCall>& calls() const { return calls_; }

 private:
  enum class State { content, between, invoke, value };
  void step(ToolCallParser::Out& out, bool final);
  void add(ToolCallParser::Out& out, std::string_view arguments);
  void close_call(ToolCallParser::Out& out);  // ends the open call's arguments object

  std::string id_prefix_;
  State state_ = State::content;
  std::string buf_;
  bool args_open_ = false;  // "{" written for the current call
  bool value_is_string_ = false;
  std::vector<ToolCall> calls_;
};

}  // namespace moe::server
