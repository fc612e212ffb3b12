#include "server/tool_constraint.h"

#include <cmath>
#include <limits>

#include <stdexcept>

namespace moe::server {

using M = JsonObjectState::Mode;

namespace {
bool digit(uint8_t c) { return c >= '0' && c <= '9'; }
bool hex(uint8_t c) { return digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
}  // namespace

bool JsonObjectState::push(uint8_t c) {
  auto close = [&](char open) {
    if (depth == 0 || stack[depth - 1] != open) return false;
    --depth;
    mode = depth == 0 ? M::done : M::after_value;
    return true;
  };
  auto open = [&](char kind) {
    if (depth >= kMaxDepth) return false;
    stack[depth++] = kind;
    mode = kind == '{' ? M::key_or_close : M::value_or_close;
    return true;
  };
  auto value = [&](uint8_t ch) {
    switch (ch) {
      case '{': return open('{');
      case '[': return open('[');
      case '"': mode = M::string; in_key = false; return true;
      case '-': mode = M::number_minus; return true;
      case '0': mode = M::number_zero; return true;
      case 't': mode = M::literal; literal = "rue"; return true;
      case 'f': mode = M::literal; literal = "alse"; return true;
      case 'n': mode = M::literal; literal = "ull"; return true;
      default:
        if (ch >= '1' && ch <= '9') { mode = M::number_int; return true; }
        return false;
    }
  };
  switch (mode) {
    case M::start: return c == '{' && open('{');
    case M::value: return value(c);
    case M::value_or_close: return c == ']' ? close('[') : value(c);
    case M::key_or_close:
      if (c == '}') return close('{');
      [[fallthrough]];
    case M::key:
      if (c != '"') return false;
      mode = M::string;
      in_key = true;
      return true;
    case M::colon:
      if (c != ':') return false;
      mode = M::value;
      return true;
    case M::after_value:
      if (c == ',') {
        mode = stack[depth - 1] == '{' ? M::key : M::value;
        return true;
      }
      return close(c == '}' ? '{' : c == ']' ? '[' : 0);
    case M::string:
      if (utf8_need > 0) {  // a continuation byte, in the range the lead byte allows (no overlongs, no surrogates)
        if (c < utf8_lo || c > utf8_hi) return false;
        utf8_lo = 0x80;
        utf8_hi = 0xBF;
        --utf8_need;
        return true;
      }
      if (c == '"') { mode = in_key ? M::colon : M::after_value; return true; }
      if (c == '\\') { mode = M::string_escape; return true; }
      if (c < 0x80) return c >= 0x20;
      if (c >= 0xC2 && c <= 0xDF) utf8_need = 1;
      else if (c >= 0xE0 && c <= 0xEF) utf8_need = 2;
      else if (c >= 0xF0 && c <= 0xF4) utf8_need = 3;
      else return false;
      if (c == 0xE0) utf8_lo = 0xA0;
      if (c == 0xED) utf8_hi = 0x9F;
      if (c == 0xF0) utf8_lo = 0x90;
      if (c == 0xF4) utf8_hi = 0x8F;
      return true;
    case M::string_escape:
      if (c == 'u') { mode = M::string_unicode; pending = 4; return true; }
      if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') {
        mode = M::string;
        return true;
      }
      return false;
    case M::string_unicode:
      if (!hex(c)) return false;
      if (--pending == 0) mode = M::string;
      return true;
    case M::literal:
      if (c != uint8_t(*literal)) return false;
      if (*++literal == 0) mode = M::after_value;
      return true;
    case M::number_minus:
      if (c == '0') { mode = M::number_zero; return true; }
      if (digit(c)) { mode = M::number_int; return true; }
      return false;
    case M::number_int:
      if (digit(c)) return true;
      [[fallthrough]];
    case M::number_zero:
      if (c == '.') { mode = M::number_dot; return true; }
      if (c == 'e' || c == 'E') { mode = M::number_exp; return true; }
      mode = M::after_value;  // the number ended: c is the next token's first byte
      return push(c);
    case M::number_dot:
      if (!digit(c)) return false;
      mode = M::number_frac;
      return true;
    case M::number_frac:
      if (digit(c)) return true;
      if (c == 'e' || c == 'E') { mode = M::number_exp; return true; }
      mode = M::after_value;
      return push(c);
    case M::number_exp:
      if (c == '+' || c == '-') { mode = M::number_exp_sign; return true; }
      [[fallthrough]];
    case M::number_exp_sign:
      if (!digit(c)) return false;
      mode = M::number_exp_digits;
      return true;
    case M::number_exp_digits:
      if (digit(c)) return true;
      mode = M::after_value;
      return push(c);
    case M::done: return false;
  }
  return false;
}

ToolCallConstraint::ToolCallConstraint(std::shared_ptr<const std::vector<std::string>> vocab_text,
                                       std::vector<std::string> heads, std::string tail)
    : vocab_(std::move(vocab_text)), heads_(std::move(heads)), tail_(std::move(tail)) {
  if (!vocab_ || heads_.empty()) throw std::invalid_argument("tool-call constraint: no vocabulary or no function");
}

std::shared_ptr<ToolCallConstraint> ToolCallConstraint::make(std::shared_ptr<const std::vector<std::string>> vocab_text,
                                                             const nlohmann::json& tools, const ToolChoice& choice,
                                                             ToolCallFormat format) {
  std::vector<std::string> heads;
  for (const auto& t : tools) {
    const std::string name = t["function"]["name"].get<std::string>();
    if (choice.mode == ToolChoice::Mode::named && name != choice.name) continue;
    // render_tool_call's text around the arguments: split it at a placeholder that is not valid JSON.
    const std::string call = render_tool_call(name, "\x01", format);
    heads.push_back(std::string(kToolCallsBegin) + call.substr(0, call.find('\x01')));
  }
  const std::string call = render_tool_call("f", "\x01", format);
  return std::make_shared<ToolCallConstraint>(std::move(vocab_text), std::move(heads),
                                              call.substr(call.find('\x01') + 1) + std::string(kToolCallsEnd));
}

bool ToolCallConstraint::advance(State& s, std::string& head, std::string_view text, bool extend) const {
  size_t i = 0;
  if (s.phase == Phase::head) {
    // Some head must continue with the text, or end inside it (the rest of the text starts the arguments).
    const std::string* match = nullptr;
    for (const auto& h : heads_) {
      if (h.size() < head.size() + 1 || h.compare(0, head.size(), head) != 0) continue;
      const size_t rest = h.size() - head.size();
      if (h.compare(head.size(), std::min(rest, text.size()), text.substr(0, rest)) == 0) {
        match = &h;
        break;
      }
    }
    if (!match) return false;
    const size_t rest = match->size() - head.size();
    if (text.size() < rest) {
      if (extend) head.append(text);
      return true;
    }
    if (extend) head = *match;
    s.phase = Phase::arguments;
    i = rest;
  }
  for (; i < text.size(); ++i) {
    const uint8_t c = uint8_t(text[i]);
    if (s.phase == Phase::arguments) {
      if (!s.json.push(c)) return false;
      if (s.json.done()) s.phase = Phase::tail;
    } else if (s.phase == Phase::tail) {
      if (s.pos >= tail_.size() || uint8_t(tail_[s.pos]) != c) return false;
      if (++s.pos == tail_.size()) s.phase = Phase::done;
    } else {
      return false;  // nothing may follow the closing marker
    }
  }
  return true;
}

void ToolCallConstraint::mask(std::span<float> logits) {
  const auto& vocab = *vocab_;
  std::string head = head_so_far_;
  for (size_t id = 0; id < logits.size(); ++id) {
    if (id >= vocab.size() || vocab[id].empty()) {
      logits[id] = -std::numeric_limits<float>::infinity();
      continue;
    }
    State s = state_;
    if (!advance(s, head, vocab[id], false)) logits[id] = -std::numeric_limits<float>::infinity();
  }
}

void ToolCallConstraint::accept(int32_t token) {
  State s = state_;
  if (token < 0 || size_t(token) >= vocab_->size() || !advance(s, head_so_far_, (*vocab_)[size_t(token)], true))
    throw std::logic_error("tool-call constraint: token " + std::to_string(token) + " was not allowed");
  state_ = s;
}

}  // namespace moe::server
