#include "server/dsml_parser.h"

#include <nlohmann/json.hpp>

namespace moe::server {

namespace {

constexpr std::string_view kBlockOpen = "<｜DSML｜function_calls>";
constexpr std::string_view kBlockClose = "</｜DSML｜function_calls>";
constexpr std::string_view kInvokeOpen = "<｜DSML｜invoke name=\"";
constexpr std::string_view kInvokeClose = "</｜DSML｜invoke>";
constexpr std::string_view kParamOpen = "<｜DSML｜parameter name=\"";
constexpr std::string_view kParamString = "\" string=\"";
constexpr std::string_view kParamClose = "</｜DSML｜parameter>";

bool space(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
// `s` could still grow into `p` (it is a proper prefix of it).
bool may_become(std::string_view s, std::string_view p) { return s.size() < p.size() && starts_with(p, s); }

size_t partial_suffix(std::string_view s, std::string_view marker) {
  for (size_t n = std::min(s.size(), marker.size() - 1); n > 0; --n)
    if (s.substr(s.size() - n) == marker.substr(0, n)) return n;
  return 0;
}

// JSON string escaping, byte by byte (json.dumps with ensure_ascii=False escapes only ASCII).
std::string escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          static constexpr char kHex[] = "0123456789abcdef";
          out += "\\u00";
          out += kHex[(c >> 4) & 0xf];
          out += kHex[c & 0xf];
        } else {
          out += c;
        }
    }
  }
  return out;
}

}  // namespace

void DsmlParser::feed(std::string_view text, ToolCallParser::Out& out) {
  buf_ += text;
  step(out, false);
}

void DsmlParser::flush(ToolCallParser::Out& out) {
  step(out, true);
  buf_.clear();
}

void DsmlParser::add(ToolCallParser::Out& out, std::string_view text) {
  if (text.empty()) return;
  calls_.back().arguments += text;
  const int index = int(calls_.size()) - 1;
  if (!out.calls.empty() && out.calls.back().index == index) out.calls.back().arguments += text;
  else out.calls.push_back({index, "", "", std::string(text)});
}

void DsmlParser::close_call(ToolCallParser::Out& out) {
  if (state_ == State::value && value_is_string_) add(out, "\"");
  add(out, args_open_ ? "}" : "{}");
  args_open_ = false;
  state_ = State::between;
}

void DsmlParser::step(ToolCallParser::Out& out, bool final) {
  for (;;) {
    switch (state_) {
      case State::content: {
        const size_t at = buf_.find(kBlockOpen);
        if (at != std::string::npos) {
          std::string_view before(buf_.data(), at);
          if (before.size() >= 2 && before.substr(before.size() - 2) == "\n\n") before.remove_suffix(2);
          out.content += before;
          buf_.erase(0, at + kBlockOpen.size());
          state_ = State::between;
          continue;
        }
        size_t hold = 0;
        if (!final) {  // what may become the block's opening tag, and the "\n\n" that would go with it
          hold = partial_suffix(buf_, kBlockOpen);
          for (int n = 0; n < 2 && hold < buf_.size() && buf_[buf_.size() - hold - 1] == '\n'; ++n) ++hold;
        }
        out.content += buf_.substr(0, buf_.size() - hold);
        buf_.erase(0, buf_.size() - hold);
        return;
      }
      case State::between: {
        size_t i = 0;
        while (i < buf_.size() && space(buf_[i])) ++i;
        buf_.erase(0, i);
        if (starts_with(buf_, kInvokeOpen)) {
          const size_t end = buf_.find("\">", kInvokeOpen.size());
          if (end == std::string::npos) {
            if (final) buf_.clear();  // cut short before the name was complete: nothing to report
            return;
          }
          const std::string name = buf_.substr(kInvokeOpen.size(), end - kInvokeOpen.size());
          buf_.erase(0, end + 2);
          const int index = int(calls_.size());
          calls_.push_back({id_prefix_ + std::to_string(index), name, ""});
          out.calls.push_back({index, calls_.back().id, name, ""});
          args_open_ = false;
          state_ = State::invoke;
          continue;
        }
        if (starts_with(buf_, kBlockClose)) {
          buf_.erase(0, kBlockClose.size());
          state_ = State::content;
          continue;
        }
        if (buf_.empty()) return;
        if (may_become(buf_, kInvokeOpen) || may_become(buf_, kBlockClose)) {
          if (final) buf_.clear();
          return;
        }
        state_ = State::content;  // not DSML: the rest is content, not lost
        continue;
      }
      case State::invoke: {
        size_t i = 0;
        while (i < buf_.size() && space(buf_[i])) ++i;
        buf_.erase(0, i);
        if (starts_with(buf_, kParamOpen)) {
          const size_t sep = buf_.find(kParamString, kParamOpen.size());
          const size_t gt = buf_.find("\">", kParamOpen.size());
          if (sep == std::string::npos || (gt != std::string::npos && gt < sep)) {
            if (gt != std::string::npos || final) {  // a parameter tag without string="...": not DSML
              close_call(out);
              state_ = State::content;
              if (final) buf_.clear();
              continue;
            }
            return;
          }
          const std::string_view rest = std::string_view(buf_).substr(sep + kParamString.size());
          const bool is_true = starts_with(rest, "true\">"), is_false = starts_with(rest, "false\">");
          if (!is_true && !is_false) {
            if (!final && (may_become(rest, "true\">") || may_become(rest, "false\">"))) return;
            close_call(out);
            state_ = State::content;
            if (final) buf_.clear();
            continue;
          }
          const std::string key = buf_.substr(kParamOpen.size(), sep - kParamOpen.size());
          std::string head = args_open_ ? ", " : "{";
          head += nlohmann::json(key).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + ": ";
          if (is_true) head += '"';
          add(out, head);
          args_open_ = true;
          value_is_string_ = is_true;
          buf_.erase(0, sep + kParamString.size() + (is_true ? 6 : 7));
          state_ = State::value;
          continue;
        }
        if (starts_with(buf_, kInvokeClose)) {
          buf_.erase(0, kInvokeClose.size());
          close_call(out);
          continue;
        }
        if (buf_.empty() && !final) return;
        if (!final && (may_become(buf_, kParamOpen) || may_become(buf_, kInvokeClose))) return;
        close_call(out);  // cut short, or not DSML: the call ends with what it had
        state_ = State::content;
        if (final && buf_.empty()) return;
        if (final && (may_become(buf_, kParamOpen) || may_become(buf_, kInvokeClose))) {
          buf_.clear();
          return;
        }
        continue;
      }
      case State::value: {
        const size_t end = buf_.find(kParamClose);
        if (end != std::string::npos) {
          const std::string_view v(buf_.data(), end);
          add(out, value_is_string_ ? escape(v) : std::string(v));
          if (value_is_string_) add(out, "\"");
          buf_.erase(0, end + kParamClose.size());
          state_ = State::invoke;
          continue;
        }
        if (final) {  // cut short inside a value: the call ends with what it had
          add(out, value_is_string_ ? escape(buf_) : buf_);
          buf_.clear();
          close_call(out);
          return;
        }
        const size_t keep = partial_suffix(buf_, kParamClose);
        const std::string_view v(buf_.data(), buf_.size() - keep);
        add(out, value_is_string_ ? escape(v) : std::string(v));
        buf_.erase(0, buf_.size() - keep);
        return;
      }
    }
  }
}

}  // namespace moe::server
