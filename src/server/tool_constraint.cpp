#include "server/tool_constraint.h"

#include <limits>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace moe::server {

AnyOfConstraint::AnyOfConstraint(std::vector<std::shared_ptr<grammar::GrammarConstraint>> alternatives)
    : alts_(std::move(alternatives)) {
  MOE_CHECK(!alts_.empty(), "a forced tool call needs at least one function");
}

void AnyOfConstraint::mask(std::span<float> logits) {
  bits_.assign((logits.size() + 63) / 64, 0);
  for (const auto& a : alts_) {
    const auto& b = a->allowed();
    for (size_t w = 0; w < std::min(b.size(), bits_.size()); ++w) bits_[w] |= b[w];
  }
  for (size_t id = 0; id < logits.size(); ++id)
    if (!(bits_[id / 64] >> (id % 64) & 1)) logits[id] = -std::numeric_limits<float>::infinity();
}

void AnyOfConstraint::accept(int32_t token) {
  std::vector<std::shared_ptr<grammar::GrammarConstraint>> keep;
  for (auto& a : alts_)
    if (a->allows(token)) {
      a->accept(token);
      keep.push_back(std::move(a));
    }
  MOE_CHECK(!keep.empty(), "the forced tool call does not allow token {}", token);
  alts_ = std::move(keep);
}

bool AnyOfConstraint::complete() const {
  for (const auto& a : alts_)
    if (a->complete()) return true;
  return false;
}

ToolCallMarkers tool_call_markers(const Tokenizer& tok) {
  return {tok.token_id(kToolCallsBegin), tok.token_id(kToolCallsEnd), tok.token_id(kToolCallBegin),
          tok.token_id(kToolCallEnd), tok.token_id(kToolSep)};
}

std::vector<grammar::Piece> tool_call_pieces(const std::string& name, const grammar::Schema& schema,
                                             ToolCallFormat format, const ToolCallMarkers& m) {
  std::vector<grammar::Piece> p;
  auto marker = [&](int32_t id, std::string_view text) {
    p.push_back(id >= 0 ? grammar::Piece::token_id(id) : grammar::Piece::bytes(std::string(text)));
  };
  marker(m.calls_begin, kToolCallsBegin);
  marker(m.call_begin, kToolCallBegin);
  if (format == ToolCallFormat::v3) {
    p.push_back(grammar::Piece::bytes("function"));
    marker(m.sep, kToolSep);
    p.push_back(grammar::Piece::bytes(name + "\n```json\n"));
    p.push_back(grammar::Piece::value(schema));
    p.push_back(grammar::Piece::bytes("\n```"));
  } else {
    p.push_back(grammar::Piece::bytes(name));
    marker(m.sep, kToolSep);
    p.push_back(grammar::Piece::value(schema));
  }
  marker(m.call_end, kToolCallEnd);
  marker(m.calls_end, kToolCallsEnd);
  return p;
}

std::shared_ptr<TokenConstraint> make_tool_call_constraint(
    std::shared_ptr<const grammar::Vocabulary> vocab,
    const std::vector<std::pair<std::string, std::shared_ptr<const grammar::Schema>>>& functions,
    ToolCallFormat format, const ToolCallMarkers& markers) {
  std::vector<std::shared_ptr<grammar::GrammarConstraint>> alts;
  for (const auto& [name, schema] : functions)
    alts.push_back(std::make_shared<grammar::GrammarConstraint>(vocab, tool_call_pieces(name, *schema, format, markers)));
  if (alts.size() == 1) return alts.front();
  return std::make_shared<AnyOfConstraint>(std::move(alts));
}

}  // namespace moe::server
