#include "server/tool_call_parser.h"

#include <cctype>

#include "server/dsml_parser.h"

namespace moe::server {

namespace {

bool space(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

// Length of the longest suffix of `s` that is a proper prefix of `marker` (text that may still become it).
size_t partial_suffix(std::string_view s, std::string_view marker) {
  for (size_t n = std::min(s.size(), marker.size() - 1); n > 0; --n)
    if (s.substr(s.size() - n) == marker.substr(0, n)) return n;
  return 0;
}

std::string trim(std::string_view s) {
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return std::string(s);
}

// Arguments end before the whitespace and backticks of a closing ``` fence.
std::string_view strip_fence_tail(std::string_view s) {
  while (!s.empty() && (space(s.back()) || s.back() == '`')) s.remove_suffix(1);
  return s;
}

void add_arguments(std::vector<ToolCall>& calls, ToolCallParser::Out& out, std::string_view text) {
  if (text.empty()) return;
  calls.back().arguments += text;
  const int index = int(calls.size()) - 1;
  if (!out.calls.empty() && out.calls.back().index == index) out.calls.back().arguments += text;
  else out.calls.push_back({index, "", "", std::string(text)});
}

}  // namespace

ToolCallParser::ToolCallParser(ToolCallFormat format, std::string id_prefix)
    : format_(format), id_prefix_(std::move(id_prefix)) {
  if (format_ == ToolCallFormat::dsml) dsml_ = std::make_unique<DsmlParser>(id_prefix_);
}
ToolCallParser::~ToolCallParser() = default;
ToolCallParser::ToolCallParser(ToolCallParser&&) noexcept = default;

const std::vector<ToolCall>& ToolCallParser::calls() const { return dsml_ ? dsml_->calls() : calls_; }

ToolCallParser::Out ToolCallParser::feed(std::string_view text) {
  Out out;
  if (dsml_) {
    dsml_->feed(text, out);
    return out;
  }
  buf_ += text;
  step(out, false);
  return out;
}

ToolCallParser::Out ToolCallParser::flush() {
  Out out;
  if (dsml_) {
    dsml_->flush(out);
    return out;
  }
  step(out, true);
  buf_.clear();
  return out;
}

void ToolCallParser::end_call() {
  state_ = State::between;
  lead_done_ = fence_done_ = false;
}

void ToolCallParser::step(Out& out, bool final) {
  for (;;) {
    switch (state_) {
      case State::content: {
        const size_t a = buf_.find(kToolCallsBegin), b = buf_.find(kToolCallBegin);
        if (a != std::string::npos && (b == std::string::npos || a < b)) {
          out.content += buf_.substr(0, a);
          buf_.erase(0, a + kToolCallsBegin.size());
          state_ = State::between;
          continue;
        }
        if (b != std::string::npos) {  // a call without the outer marker
          out.content += buf_.substr(0, b);
          buf_.erase(0, b + kToolCallBegin.size());
          state_ = State::header;
          continue;
        }
        const size_t hold = final ? 0 : std::max(partial_suffix(buf_, kToolCallsBegin), partial_suffix(buf_, kToolCallBegin));
        out.content += buf_.substr(0, buf_.size() - hold);
        buf_.erase(0, buf_.size() - hold);
        return;
      }
      case State::between: {
        size_t i = 0;
        while (i < buf_.size() && space(buf_[i])) ++i;
        buf_.erase(0, i);
        if (starts_with(buf_, kToolCallBegin)) {
          buf_.erase(0, kToolCallBegin.size());
          state_ = State::header;
          continue;
        }
        if (starts_with(buf_, kToolCallsEnd)) {
          buf_.erase(0, kToolCallsEnd.size());
          state_ = State::content;
          continue;
        }
        if (buf_.empty()) return;
        if (!final && (starts_with(kToolCallBegin, buf_) || starts_with(kToolCallsEnd, buf_))) return;  // may become one
        if (final && (starts_with(kToolCallBegin, buf_) || starts_with(kToolCallsEnd, buf_))) {
          buf_.clear();
          return;
        }
        state_ = State::content;  // unexpected text after a call: it is content, not lost
        continue;
      }
      case State::header: {
        const size_t sep = buf_.find(kToolSep);
        if (sep == std::string::npos) {
          if (final) buf_.clear();  // a call cut short before its name was complete: nothing to report
          return;
        }
        std::string name;
        if (format_ == ToolCallFormat::v3) {  // function<｜tool▁sep｜>NAME\n
          const size_t nl = buf_.find('\n', sep + kToolSep.size());
          const size_t fence = buf_.find("```", sep + kToolSep.size());
          const size_t stop = std::min(nl, fence);
          if (stop == std::string::npos) {
            if (!final) return;
            buf_.clear();
            return;
          }
          name = trim(std::string_view(buf_).substr(sep + kToolSep.size(), stop - sep - kToolSep.size()));
          buf_.erase(0, stop == nl ? nl + 1 : stop);
        } else {  // NAME<｜tool▁sep｜>
          name = trim(std::string_view(buf_).substr(0, sep));
          buf_.erase(0, sep + kToolSep.size());
        }
        const int index = int(calls_.size());
        calls_.push_back({id_prefix_ + std::to_string(index), name, ""});
        out.calls.push_back({index, calls_.back().id, name, ""});
        state_ = State::arguments;
        lead_done_ = fence_done_ = false;
        continue;
      }
      case State::arguments: {
        size_t end = buf_.find(kToolCallEnd);
        const bool closed = end != std::string::npos;
        const bool last = closed || final;
        if (!lead_done_) {  // drop whitespace and one opening fence (``` and a language name) before the arguments
          const size_t lim = closed ? end : buf_.size();
          size_t i = 0;
          while (i < lim && space(buf_[i])) ++i;
          if (!fence_done_ && buf_.compare(i, 3, "```") == 0 && i + 3 <= lim) {
            size_t j = i + 3;
            while (j < lim && std::isalpha((unsigned char)buf_[j])) ++j;
            if (j == lim && !last) return;  // the language name may go on
            fence_done_ = true;
            i = j;
            while (i < lim && space(buf_[i])) ++i;
          } else if (!fence_done_ && !last && i < lim && starts_with("```", std::string_view(buf_).substr(i, lim - i))) {
            return;  // "`" or "``": may still open a fence
          }
          buf_.erase(0, i);
          if (i == lim && !last) return;  // only whitespace so far
          lead_done_ = true;
          end = buf_.find(kToolCallEnd);
        }
        if (closed) {
          add_arguments(calls_, out, strip_fence_tail(std::string_view(buf_).substr(0, end)));
          if (calls_.back().arguments.empty()) add_arguments(calls_, out, "{}");
          buf_.erase(0, end + kToolCallEnd.size());
          end_call();
          continue;
        }
        if (final) {
          add_arguments(calls_, out, strip_fence_tail(buf_));
          if (calls_.back().arguments.empty()) add_arguments(calls_, out, "{}");
          buf_.clear();
          end_call();
          return;
        }
        // Hold back what may be the closing fence and the start of the end marker.
        size_t cut = buf_.size() - partial_suffix(buf_, kToolCallEnd);
        while (cut > 0 && (space(buf_[cut - 1]) || buf_[cut - 1] == '`')) --cut;
        add_arguments(calls_, out, std::string_view(buf_).substr(0, cut));
        buf_.erase(0, cut);
        return;
      }
    }
  }
}

}  // namespace moe::server
