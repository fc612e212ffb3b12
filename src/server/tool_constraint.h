#pragma once
// A forced tool call (tool_choice "required" or a named function) enforced during decoding, on the grammar engine
// (engine/grammar): for each function the forced choice allows, a GrammarConstraint over the pieces
//   V3/R1: <｜tool▁calls▁begin｜> <｜tool▁call▁begin｜> "function" <｜tool▁sep｜> "NAME\n```json\n" ARGS "\n```"
//          <｜tool▁call▁end｜> <｜tool▁calls▁end｜>
//   V3.1:  <｜tool▁calls▁begin｜> <｜tool▁call▁begin｜> "NAME" <｜tool▁sep｜> ARGS <｜tool▁call▁end｜> <｜tool▁calls▁end｜>
// where the markers are their token ids (text where the tokenizer has no such token) and ARGS one JSON value of the
// function's parameter schema (compiled at parse time: unsupported keywords are a 400). "required" with several
// functions runs the alternatives side by side (AnyOfConstraint): a token is allowed if any allows it and keeps
// the ones that do; the names differ before the arguments, so one is left by then. The request ends when the
// closing marker is accepted (finish_reason "tool_calls").
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/grammar/constraint.h"
#include "engine/token_constraint.h"
#include "server/tools.h"

namespace moe {
class Tokenizer;
}

namespace moe::server {

class AnyOfConstraint final : public TokenConstraint {
 public:
  explicit AnyOfConstraint(std::vector<std::shared_ptr<grammar::GrammarConstraint>> alternatives);
  void mask(std::span<float> logits) override;
  void accept(int32_t token) override;
  bool complete() const override;

 private:
  std::vector<std::shared_ptr<grammar::GrammarConstraint>> alts_;
  std::vector<uint64_t> bits_;
};

// The ids of the tool-call markers (-1 where the tokenizer has no such token: the marker is then matched as text).
struct ToolCallMarkers {
  int32_t calls_begin = -1, calls_end = -1, call_begin = -1, call_end = -1, sep = -1;
};
ToolCallMarkers tool_call_markers(const Tokenizer& tok);

// The pieces of one forced call of `name` with arguments of `schema`.
std::vector<grammar::Piece> tool_call_pieces(const std::string& name, const grammar::Schema& schema,
                                             ToolCallFormat format, const ToolCallMarkers& markers);

// The constraint for the forced functions (name, compiled parameter schema): one of them is called.
std::shared_ptr<TokenConstraint> make_tool_call_constraint(
    std::shared_ptr<const grammar::Vocabulary> vocab,
    const std::vector<std::pair<std::string, std::shared_ptr<const grammar::Schema>>>& functions,
    ToolCallFormat format, const ToolCallMarkers& markers);

}  // namespace moe::server
