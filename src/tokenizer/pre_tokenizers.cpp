// Pre-tokenizers: Sequence, Split, ByteLevel, Digits, Metaspace, Whitespace, WhitespaceSplit, Punctuation,
// CharDelimiterSplit, BertPreTokenizer. Semantics follow HF tokenizers' pre_tokenizers module; every regex runs on
// PCRE2.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <optional>

#include "core/error.h"
#include "tokenizer/components.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace moe::tok {

SplitBehavior parse_split_behavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::Removed;
  if (name == "Isolated") return SplitBehavior::Isolated;
  if (name == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (name == "Contiguous") return SplitBehavior::Contiguous;
  fail("tokenizer.json: unknown split behavior '{}'", name);
}

void split_by_matches(const Piece& piece, const std::vector<Span>& matches, SplitBehavior behavior, bool invert,
                      std::vector<Piece>& out) {
  struct Segment {
    size_t start, end;
    bool is_match;
  };
  // The whole text as alternating gaps and matches (empty matches included, as HF's find_matches yields them).
  std::vector<Segment> segments;
  size_t previous = 0;
  for (const Span& m : matches) {
    if (m.start != previous) segments.push_back({previous, m.start, false});
    segments.push_back({m.start, m.end, true});
    previous = m.end;
  }
  if (previous != piece.text.size()) segments.push_back({previous, piece.text.size(), false});
  if (invert)
    for (Segment& s : segments) s.is_match = !s.is_match;

  // (start, end, removed)
  std::vector<Segment> kept;
  kept.reserve(segments.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (const Segment& s : segments) kept.push_back({s.start, s.end, false});
      break;
    case SplitBehavior::Removed:
      kept = segments;  // is_match now means "drop"
      break;
    case SplitBehavior::Contiguous:
      for (const Segment& s : segments) {
        if (s.is_match == previous_match && !kept.empty())
          kept.back().end = s.end;
        else
          kept.push_back({s.start, s.end, false});
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::MergedWithPrevious:
      for (const Segment& s : segments) {
        if (s.is_match && !previous_match && !kept.empty())
          kept.back().end = s.end;
        else
          kept.push_back({s.start, s.end, false});
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::MergedWithNext:
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty())
          kept.back().start = it->start;
        else
          kept.push_back({it->start, it->end, false});
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  for (const Segment& s : kept) {
    if (s.is_match || s.start == s.end) continue;
    out.push_back({piece.text.substr(s.start, s.end - s.start), piece.at_start && s.start == 0});
  }
}

namespace {

using json = nlohmann::json;

std::vector<Span> find_spans(const Regex& regex, std::string_view text) {
  std::vector<Span> spans;
  regex.find_all(text, [&](size_t start, size_t end) { spans.push_back({start, end}); });
  return spans;
}

void split_all(std::vector<Piece>& pieces, const Regex& regex, SplitBehavior behavior, bool invert) {
  std::vector<Piece> out;
  out.reserve(pieces.size() * 2);
  for (const Piece& piece : pieces) split_by_matches(piece, find_spans(regex, piece.text), behavior, invert, out);
  pieces = std::move(out);
}

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void split(std::vector<Piece>& pieces) const override {
    for (const auto& step : steps_) step->split(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

// Split, Digits, Whitespace, Punctuation...: one regex, one behavior.
class RegexSplit : public PreTokenizer {
 public:
  RegexSplit(const std::string& pattern, SplitBehavior behavior, bool invert)
      : regex_(pattern), behavior_(behavior), invert_(invert) {}
  void split(std::vector<Piece>& pieces) const override { split_all(pieces, regex_, behavior_, invert_); }

 private:
  Regex regex_;
  SplitBehavior behavior_;
  bool invert_;
};

// A Split with an empty String pattern leaves each piece whole (HF's Pattern for "" matches nothing).
class NoSplit : public PreTokenizer {
 public:
  void split(std::vector<Piece>&) const override {}
};

class BertPreTokenizer : public PreTokenizer {
 public:
  void split(std::vector<Piece>& pieces) const override {
    split_all(pieces, whitespace_, SplitBehavior::Removed, false);
    split_all(pieces, punctuation_, SplitBehavior::Isolated, false);
  }

 private:
  Regex whitespace_{R"(\p{White_Space})"};
  Regex punctuation_{R"([\p{P}!-/:-@\[-`{-~])"};
};

// GPT-2's pre-tokenization regex, the one ByteLevel uses when use_regex is true.
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex) : add_prefix_space_(add_prefix_space) {
    if (use_regex) regex_.emplace(kGpt2Pattern);
  }
  void split(std::vector<Piece>& pieces) const override {
    if (add_prefix_space_)
      for (Piece& p : pieces)
        if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, 1, ' ');
    if (regex_) split_all(pieces, *regex_, SplitBehavior::Isolated, false);
    for (Piece& p : pieces) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (char c : p.text) mapped += utf8::byte_to_utf8(static_cast<uint8_t>(c));
      p.text = std::move(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  std::optional<Regex> regex_;
};

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  enum class Prepend { Always, First, Never };
  MetaspacePreTokenizer(std::string replacement, Prepend prepend, bool split)
      : replacement_(std::move(replacement)), prepend_(prepend), split_(split), regex_(escape_regex(replacement_)) {}
  void split(std::vector<Piece>& pieces) const override {
    for (Piece& p : pieces) {
      std::string replaced;
      for (char c : p.text) {
        if (c == ' ')
          replaced += replacement_;
        else
          replaced += c;
      }
      p.text = std::move(replaced);
      const bool starts_with_replacement = p.text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts_with_replacement && (prepend_ == Prepend::Always || (prepend_ == Prepend::First && p.at_start)))
        p.text.insert(0, replacement_);
    }
    if (split_) split_all(pieces, regex_, SplitBehavior::MergedWithNext, false);
  }

 private:
  std::string replacement_;
  Prepend prepend_;
  bool split_;
  Regex regex_;
};

std::string pattern_of(const json& pattern) {
  if (pattern.contains("Regex")) return pattern["Regex"].get<std::string>();
  return escape_regex(pattern.at("String").get<std::string>());
}

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& spec) {
  if (spec.is_null()) return nullptr;
  const std::string type = spec.at("type").get<std::string>();
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const json& step : spec.at("pretokenizers"))
      if (auto p = make_pre_tokenizer(step)) steps.push_back(std::move(p));
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  if (type == "Split") {
    const json& pattern = spec.at("pattern");
    if (pattern.contains("String") && pattern["String"].get<std::string>().empty()) return std::make_unique<NoSplit>();
    return std::make_unique<RegexSplit>(pattern_of(pattern), parse_split_behavior(spec.at("behavior")),
                                        spec.value("invert", false));
  }
  if (type == "ByteLevel")
    return std::make_unique<ByteLevelPreTokenizer>(spec.value("add_prefix_space", true), spec.value("use_regex", true));
  if (type == "Digits") {
    // HF splits on char::is_numeric (Unicode N*): each digit alone, or runs of them kept together.
    if (spec.value("individual_digits", false))
      return std::make_unique<RegexSplit>(R"(\p{N})", SplitBehavior::Isolated, false);
    return std::make_unique<RegexSplit>(R"(\p{N})", SplitBehavior::Contiguous, false);
  }
  if (type == "Whitespace") {
    // HF: keep the matches of \w+|[^\w\s]+ (Rust regex's Unicode \w, spelled out for PCRE2), drop the rest.
    constexpr const char* kWord = R"(\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D})";
    return std::make_unique<RegexSplit>(fmt::format("[{0}]+|[^{0}\\s]+", kWord), SplitBehavior::Removed, true);
  }
  if (type == "WhitespaceSplit")
    return std::make_unique<RegexSplit>(R"(\p{White_Space})", SplitBehavior::Removed, false);
  if (type == "Punctuation")
    return std::make_unique<RegexSplit>(R"([\p{P}!-/:-@\[-`{-~])",
                                        parse_split_behavior(spec.value("behavior", std::string("Isolated"))), false);
  if (type == "CharDelimiterSplit")
    return std::make_unique<RegexSplit>(escape_regex(spec.at("delimiter").get<std::string>()), SplitBehavior::Removed,
                                        false);
  if (type == "BertPreTokenizer") return std::make_unique<BertPreTokenizer>();
  if (type == "Metaspace") {
    std::string scheme = spec.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = spec.value("add_prefix_space", true) ? "always" : "never";
    MetaspacePreTokenizer::Prepend prepend;
    if (scheme == "always")
      prepend = MetaspacePreTokenizer::Prepend::Always;
    else if (scheme == "first")
      prepend = MetaspacePreTokenizer::Prepend::First;
    else if (scheme == "never")
      prepend = MetaspacePreTokenizer::Prepend::Never;
    else
      fail("tokenizer.json: unknown Metaspace prepend_scheme '{}'", scheme);
    return std::make_unique<MetaspacePreTokenizer>(spec.value("replacement", std::string("\u2581")), prepend,
                                                   spec.value("split", true));
  }
  fail("tokenizer.json: unsupported pre_tokenizer type '{}'", type);
}

}  // namespace moe::tok
