#pragma once
// The model's DeepSeek tool-call markup (tools.h) -> OpenAI tool calls, incrementally: text is fed as it streams
// (markers may be split anywhere across pieces) and comes back as content plus tool-call deltas the way OpenAI
// streams them: a call's first delta has its index, id and name; later ones carry pieces of its arguments. Text that
// might be the start of a marker is held back until it is known not to be; nothing is lost or repeated, so the
// deltas of a stream concatenate to exactly the calls of the whole text.
//
// States: content -> (<｜tool▁calls▁begin｜> or a bare <｜tool▁call▁begin｜>) -> between calls -> header (type and
// name, up to the arguments) -> arguments (a ```json fence and the whitespace around it are dropped) -> between
// calls -> (<｜tool▁calls▁end｜>) content again.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "server/tools.h"

namespace moe::server {

struct ToolCall {
  std::string id, name, arguments;
};

class DsmlParser;  // server/dsml_parser.h: V3.2's format, to which ToolCallFormat::dsml forwards

struct ToolCallDelta {
  int index = 0;
  std::string id, name;  // set on a call's first delta only
  std::string arguments;
};

class ToolCallParser {
 public:
  // Call ids are id_prefix + the call's index.
  ToolCallParser(ToolCallFormat format, std::string id_prefix);
  ~ToolCallParser();
  ToolCallParser(ToolCallParser&&) noexcept;

  struct Out {
    std::string content;
    std::vector<ToolCallDelta> calls;
  };
  Out feed(std::string_view text);
  Out flush();  // at the end of the reply: held-back text, and a call cut short ends with what it had

  const std::vector<ToolCall>& calls() const;  // the calls so far (arguments as streamed)

 private:
  enum class State { content, between, header, arguments };
  void step(Out& out, bool final);
  void emit_arguments(Out& out, bool final);
  void end_call();

  ToolCallFormat format_;
  std::string id_prefix_;
  State state_ = State::content;
  std::string buf_;            // text not yet consumed by the current state
  bool lead_done_ = false;     // arguments: the opening fence and whitespace are behind us
  bool fence_done_ = false;    // arguments: the opening fence was dropped (only one is)
  std::vector<ToolCall> calls_;
  std::unique_ptr<DsmlParser> dsml_;  // set for ToolCallFormat::dsml, which it parses instead
};

}  // namespace moe::server
