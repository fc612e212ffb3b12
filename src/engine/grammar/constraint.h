#pragma once
// A TokenConstraint (engine/token_constraint.h) from a sequence of pieces (matcher.h): what structured output
// (response_format) and forced tool calls use. Examples:
//   response_format json_schema:   {Piece::value(Schema::compile(schema))}
//   a forced DeepSeek-V3 tool call: {Piece::token_id(calls_begin), Piece::token_id(call_begin),
//                                    Piece::bytes("function"), Piece::token_id(sep),
//                                    Piece::bytes(name + "\n```json\n"), Piece::value(Schema::compile(params)),
//                                    Piece::bytes("\n```"), Piece::token_id(call_end), Piece::token_id(calls_end)}
// Text pieces may be produced by any tokens whose bytes spell them (tokens may span piece boundaries); token
// pieces only by their id. complete() is true once every piece is matched and nothing can follow; where the
// last value could go on (a number at the top level), end_token (the tokenizer's EOS) is allowed as well.
//
// Mask cost: the matcher walks the vocabulary's trie from the current state, pruning at the first byte no
// thread takes; inside a JSON string the plain tokens are allowed by length alone and only the others walked.
#include <memory>
#include <optional>
#include <vector>

#include "engine/grammar/matcher.h"
#include "engine/grammar/vocabulary.h"
#include "engine/token_constraint.h"

namespace moe::grammar {

class GrammarConstraint : public TokenConstraint {
 public:
  GrammarConstraint(std::shared_ptr<const Vocabulary> vocab, std::vector<Piece> pieces,
                    std::optional<int32_t> end_token = std::nullopt, uint32_t max_depth = 32);

  void mask(std::span<float> logits) override;
  void accept(int32_t token) override;  // throws moe::Error for a token the constraint does not allow
  bool complete() const override;

  // The tokens allowed next, as a bit set over the vocabulary (64 ids a word).
  const std::vector<uint64_t>& allowed();
  bool allows(int32_t token);
  const Matcher& matcher() const { return matcher_; }
  const State& state() const { return state_; }

 private:
  void walk(const TokenTrie& trie, uint32_t node, size_t depth);
  void allow(int32_t id) {
    if (id >= 0 && id < vocab_->size()) bits_[size_t(id) / 64] |= uint64_t(1) << (id % 64);
  }

  std::shared_ptr<const Vocabulary> vocab_;
  Matcher matcher_;
  std::optional<int32_t> end_token_;
  State state_;
  bool bits_valid_ = false;
  std::vector<uint64_t> bits_;
  std::vector<State> depth_;  // the trie walk's state at each depth
};

}  // namespace moe::grammar
