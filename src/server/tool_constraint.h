#pragma once
// A forced tool call (tool_choice "required" or a named function) enforced during decoding: a TokenConstraint
// (engine/token_constraint.h) over the bytes of each token's text that allows only
//   <｜tool▁calls▁begin｜> + the call header of one allowed function (tools.h's format) + a JSON object
//   + the call's closing + <｜tool▁calls▁end｜>
// and completes (the request ends with finish_reason "tool_calls") when that text is whole.
//
// The arguments automaton is a generic JSON-object one (compact: no whitespace between tokens, nesting at most 16
// deep): it guarantees arguments that parse as a JSON object, not that they match the tool's parameter schema (that
// is the JSON-Schema grammar's job). Cost per token: one pass over the vocabulary's texts (a few bytes each) with a
// copy of a fixed-size state per candidate.
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/token_constraint.h"
#include "server/tools.h"

namespace moe::server {

// A byte-level JSON-object recogniser; trivially copyable, so a candidate token is tried on a copy.
struct JsonObjectState {
  static constexpr int kMaxDepth = 16;
  enum class Mode : uint8_t {
    start, value, key_or_close, key, colon, after_value, value_or_close, string, string_escape, string_unicode,
    number_minus, number_zero, number_int, number_dot, number_frac, number_exp, number_exp_sign, number_exp_digits,
    literal, done
  };
  Mode mode = Mode::start;
  bool in_key = false;
  uint8_t depth = 0, pending = 0;  // pending: hex digits of \uXXXX
  uint8_t utf8_need = 0, utf8_lo = 0x80, utf8_hi = 0xBF;  // a string's UTF-8 character in progress (valid UTF-8 only)
  const char* literal = nullptr;   // the rest of true / false / null
  std::array<char, kMaxDepth> stack{};
  bool push(uint8_t c);  // false: c cannot come next
  bool done() const { return mode == Mode::done; }
};

class ToolCallConstraint final : public TokenConstraint {
 public:
  // vocab_text: each token id's decoded bytes (special tokens empty: never allowed). heads: for each allowed
  // function, the text up to its arguments (tool-calls marker included); tail: the text after the arguments.
  ToolCallConstraint(std::shared_ptr<const std::vector<std::string>> vocab_text, std::vector<std::string> heads,
                     std::string tail);
  // The constraint for `tool_choice` (required: any of `tools`; named: that one) in `format`.
  static std::shared_ptr<ToolCallConstraint> make(std::shared_ptr<const std::vector<std::string>> vocab_text,
                                                  const nlohmann::json& tools, const ToolChoice& choice,
                                                  ToolCallFormat format);

  void mask(std::span<float> logits) override;
  void accept(int32_t token) override;
  bool complete() const override { return state_.phase == Phase::done; }

 private:
  enum class Phase : uint8_t { head, arguments, tail, done };
  struct State {
    Phase phase = Phase::head;
    uint32_t pos = 0;  // bytes of the head / tail consumed
    JsonObjectState json;
  };
  // Moves `s` over a token's text; false if the text cannot come next. `head` is the head text consumed so far
  // (head phase only); it is extended when `extend` is true.
  bool advance(State& s, std::string& head, std::string_view text, bool extend) const;

  std::shared_ptr<const std::vector<std::string>> vocab_;
  std::vector<std::string> heads_;
  std::string head_so_far_, tail_;
  State state_;
};

}  // namespace moe::server
