#include "server/reasoning.h"

#include <algorithm>

namespace moe::server {

namespace {
constexpr std::string_view kOpen = "<think>", kClose = "</think>";

// Length of the longest suffix of `s` that is a proper prefix of `tag`.
size_t partial_suffix(std::string_view s, std::string_view tag) {
  for (size_t k = std::min(tag.size() - 1, s.size()); k > 0; --k)
    if (s.substr(s.size() - k) == tag.substr(0, k)) return k;
  return 0;
}
bool is_space(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
}  // namespace

bool prompt_opens_reasoning(std::string_view p) {
  while (!p.empty() && is_space(p.back())) p.remove_suffix(1);
  return p.size() >= kOpen.size() && p.substr(p.size() - kOpen.size()) == kOpen;
}

bool template_supports_reasoning(std::string_view src) { return src.find("</think>") != std::string_view::npos; }

namespace {
// A switch is on when it is true or (loosely, as Python's bool() reads it) a non-empty / non-zero value.
bool truthy(const nlohmann::json& v) {
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string() || v.is_array() || v.is_object()) return !v.empty();
  return false;
}
}  // namespace

nlohmann::json thinking_kwargs(nlohmann::json kw) {
  if (!kw.is_object() || (!kw.contains("thinking") && !kw.contains("enable_thinking"))) return kw;
  const bool on = truthy(kw.value("thinking", nlohmann::json())) || truthy(kw.value("enable_thinking", nlohmann::json()));
  kw["thinking"] = on;
  kw["enable_thinking"] = on;
  return kw;
}

bool thinking_requested(const nlohmann::json& kw) {
  return kw.is_object() && (truthy(kw.value("thinking", nlohmann::json())) ||
                            truthy(kw.value("enable_thinking", nlohmann::json())));
}

ReasoningParser::Delta ReasoningParser::feed(std::string_view text) {
  Delta d;
  if (!enabled_) {
    d.content = std::string(text);
    return d;
  }
  pending_.append(text);
  for (;;) {
    if (in_reasoning_) {
      const size_t pos = pending_.find(kClose);
      if (pos != std::string::npos) {
        d.reasoning += pending_.substr(0, pos);
        pending_.erase(0, pos + kClose.size());
        in_reasoning_ = false;
        content_started_ = true;
        strip_newlines_ = true;
        continue;
      }
      const size_t hold = partial_suffix(pending_, kClose);
      d.reasoning += pending_.substr(0, pending_.size() - hold);
      pending_.erase(0, pending_.size() - hold);
      return d;
    }
    if (strip_newlines_) {
      size_t i = 0;
      while (i < pending_.size() && (pending_[i] == '\n' || pending_[i] == '\r')) ++i;
      pending_.erase(0, i);
      if (pending_.empty()) return d;
      strip_newlines_ = false;
    }
    if (!content_started_) {
      // Before any content: leading whitespace, then possibly "<think>".
      size_t i = 0;
      while (i < pending_.size() && is_space(pending_[i])) ++i;
      std::string_view rest = std::string_view(pending_).substr(i);
      if (rest.size() >= kOpen.size() && rest.substr(0, kOpen.size()) == kOpen) {
        pending_.erase(0, i + kOpen.size());
        in_reasoning_ = true;
        continue;
      }
      if (rest.size() < kOpen.size() && kOpen.substr(0, rest.size()) == rest) return d;  // might still be "<think>"
      content_started_ = true;
    }
    d.content += pending_;
    pending_.clear();
    return d;
  }
}

ReasoningParser::Delta ReasoningParser::flush() {
  Delta d;
  if (in_reasoning_) d.reasoning = std::move(pending_);
  else if (!strip_newlines_) d.content = std::move(pending_);
  pending_.clear();
  return d;
}

}  // namespace moe::server
