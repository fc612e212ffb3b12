#include "tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"
#include "tokenizer/unicode.h"

#include <fmt/format.h>

namespace moe {

struct Regex::Code {
  pcre2_code* code = nullptr;
  ~Code() { pcre2_code_free(code); }
};

namespace {
// One match-data block and JIT stack per thread, shared by every pattern (we only read the whole-match offsets).
struct ThreadMatchState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  ThreadMatchState() { pcre2_jit_stack_assign(context, nullptr, stack); }
  ~ThreadMatchState() {
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(stack);
    pcre2_match_data_free(data);
  }
};
ThreadMatchState& thread_state() {
  thread_local ThreadMatchState state;
  return state;
}
}  // namespace

namespace {

// Code points that Unicode 15.0-16.0 assigned (unassigned in the Unicode 14 tables of Debian 12's PCRE2 10.42),
// by general category. HF tokenizers' Oniguruma knows Unicode 16, so without these a new emoji would not be \p{S}.
struct RecentRange {
  const char* category;
  char32_t first, last;
};
constexpr RecentRange kRecentRanges[] = {
#include "tokenizer/unicode_recent.inc"
};

// "\x{first}-\x{last}..." for the property name (a general category such as L or Lu), or "" for others.
std::string recent_ranges(std::string_view property) {
  std::string out;
  for (const RecentRange& r : kRecentRanges) {
    const std::string_view category = r.category;
    if (property == category || (property.size() == 1 && category[0] == property[0]))
      out += fmt::format("\\x{{{:X}}}-\\x{{{:X}}}", static_cast<uint32_t>(r.first), static_cast<uint32_t>(r.last));
  }
  return out;
}

// Rewrites \w as Oniguruma's Unicode word class, and \p{Cat} as [\p{Cat}<recent ranges>] (inside a class: \p{Cat}<recent ranges>) and \P{Cat} outside a class
// as [^\p{Cat}<recent ranges>]. \P{..} inside a class is left alone (PCRE2 10.42 cannot subtract ranges).
std::string with_recent_code_points(const std::string& pattern) {
  std::string out;
  const size_t n = pattern.size();
  bool in_class = false;
  size_t i = 0;
  while (i < n) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < n) {
      const char e = pattern[i + 1];
      if (e == 'Q') {  // \Q...\E is literal
        const size_t end = pattern.find("\\E", i + 2);
        const size_t stop = end == std::string::npos ? n : end + 2;
        out.append(pattern, i, stop - i);
        i = stop;
        continue;
      }
      if ((e == 'p' || e == 'P') && i + 2 < n) {
        size_t end;
        std::string name;
        if (pattern[i + 2] == '{') {
          const size_t close = pattern.find('}', i + 3);
          if (close == std::string::npos) {  // malformed: let PCRE2 report it
            out.append(pattern, i, std::string::npos);
            break;
          }
          name = pattern.substr(i + 3, close - i - 3);
          end = close + 1;
        } else {
          name = pattern.substr(i + 2, 1);
          end = i + 3;
        }
        const std::string token = pattern.substr(i, end - i);
        const std::string extra = recent_ranges(name);
        if (extra.empty() || (e == 'P' && in_class)) out += token;
        else if (e == 'p') out += in_class ? token + extra : "[" + token + extra + "]";
        else out += "[^\\p{" + name + "}" + extra + "]";
        i = end;
        continue;
      }
      if (e == 'w' || e == 'W') {
        // Oniguruma's Unicode \w is Letter | Mark | Number | Connector_Punctuation; PCRE2 10.42's lacks marks.
        const std::string word = "\\p{L}\\p{M}\\p{N}\\p{Pc}" + recent_ranges("L") + recent_ranges("M") +
                                 recent_ranges("N") + recent_ranges("Pc");
        if (e == 'w') out += in_class ? word : "[" + word + "]";
        else out += in_class ? std::string("\\W") : "[^" + word + "]";
        i += 2;
        continue;
      }
      out.append(pattern, i, 2);
      i += 2;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      ++i;
      if (i < n && pattern[i] == '^') out += pattern[i++];
      if (i < n && pattern[i] == ']') out += pattern[i++];  // a leading ] is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < n && pattern[i + 1] == ':') {  // [:alpha:]
      const size_t close = pattern.find(":]", i + 2);
      const size_t stop = close == std::string::npos ? n : close + 2;
      out.append(pattern, i, stop - i);
      i = stop;
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
    ++i;
  }
  return out;
}

}  // namespace

Regex::Regex(const std::string& pattern) : pattern_(pattern), code_(std::make_unique<Code>()) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  const std::string compiled = with_recent_code_points(pattern);
  code_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(compiled.data()), compiled.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &error_offset, nullptr);
  if (!code_->code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    fail("invalid regex /{}/: {}", pattern, reinterpret_cast<const char*>(message));
  }
  pcre2_jit_compile(code_->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

bool Regex::search(std::string_view subject, size_t from, size_t& start, size_t& end) const {
  ThreadMatchState& state = thread_state();
  const int rc = pcre2_match(code_->code, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), from, 0,
                             state.data, state.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(rc, message, sizeof message);
    fail("regex /{}/ failed: {}", pattern_, reinterpret_cast<const char*>(message));
  }
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.data);
  start = ovector[0];
  end = ovector[1];
  return true;
}

void Regex::find_all(std::string_view subject, const std::function<void(size_t, size_t)>& on_match) const {
  size_t pos = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (pos <= subject.size()) {
    size_t start, end;
    if (!search(subject, pos, start, end)) break;
    if (start == end && have_last && last_end == end) {
      if (end >= subject.size()) break;
      pos = end + utf8::decode_at(subject, end).length;
      continue;
    }
    on_match(start, end);
    have_last = true;
    last_end = end;
    if (start == end) {
      if (end >= subject.size()) break;
      pos = end + utf8::decode_at(subject, end).length;
    } else {
      pos = end;
    }
  }
}

bool Regex::matches_at_start(std::string_view subject) const {
  size_t start, end;
  return search(subject, 0, start, end) && start == 0;
}

std::string escape_regex(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace moe
