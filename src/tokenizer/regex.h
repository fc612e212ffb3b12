#pragma once
// PCRE2 (UTF + UCP, JIT) behind a small interface. Patterns are compiled with PCRE2_MATCH_INVALID_UTF, so
// subjects holding invalid UTF-8 are searched safely: ill-formed bytes never match, they only separate matches.
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace moe {

class Regex {
 public:
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // Calls on_match(start, end) for each non-overlapping match, left to right. Empty matches are reported, but one
  // directly after the previous match is skipped and the search then moves on by one character (the iteration
  // Oniguruma's and Rust regex's find_iter use, which is what HF tokenizers sees).
  void find_all(std::string_view subject, const std::function<void(size_t, size_t)>& on_match) const;
  bool matches_at_start(std::string_view subject) const;
  const std::string& pattern() const { return pattern_; }

 private:
  // Returns false when there is no match at or after `from`.
  bool search(std::string_view subject, size_t from, size_t& start, size_t& end) const;
  std::string pattern_;
  struct Code;
  std::unique_ptr<Code> code_;
};

// Pattern that matches `literal` exactly (for Split/Replace with a String pattern).
std::string escape_regex(std::string_view literal);

}  // namespace moe
