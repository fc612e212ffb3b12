// Normalizers: Sequence, Lowercase, Replace, Prepend, Strip, and NFC/NFD/NFKC/NFKD (with ICU; without it they are a
// clear error). Semantics follow HF tokenizers' normalizers module.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/components.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

#ifdef MOE_HAVE_ICU
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>
#endif

namespace moe::tok {
namespace {

using json = nlohmann::json;

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  void normalize(std::string& text) const override {
    for (const auto& step : steps_) step->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);  // HF leaves an empty string empty
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(const std::string& pattern, std::string content) : regex_(pattern), content_(std::move(content)) {}
  void normalize(std::string& text) const override {
    std::string out;
    size_t last = 0;
    regex_.find_all(text, [&](size_t start, size_t end) {
      out.append(text, last, start - last);
      out += content_;
      last = end;
    });
    out.append(text, last, std::string::npos);
    text = std::move(out);
  }

 private:
  Regex regex_;
  std::string content_;
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string& text) const override {
    size_t begin = 0, end = text.size();
    if (left_)
      while (begin < end) {
        const auto d = utf8::decode_at(text, begin);
        if (!utf8::is_whitespace(d.code_point)) break;
        begin += d.length;
      }
    if (right_)
      while (end > begin) {
        const size_t prev = utf8::previous_start(text, end);
        if (!utf8::is_whitespace(utf8::decode_at(text, prev).code_point)) break;
        end = prev;
      }
    text = text.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

#ifdef MOE_HAVE_ICU
// Runs ICU on each well-formed stretch of the text; ill-formed bytes are kept as they are.
template <typename Transform>
void transform_valid_runs(std::string& text, Transform transform) {
  std::string out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t run_end = pos;
    while (run_end < text.size()) {
      const auto d = utf8::decode_at(text, run_end);
      if (d.code_point == utf8::kInvalidCodePoint) break;
      run_end += d.length;
    }
    if (run_end > pos) {
      out += transform(std::string_view(text).substr(pos, run_end - pos));
      pos = run_end;
    } else {
      out += text[pos++];
    }
  }
  text = std::move(out);
}

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(const std::string& form) {
    UErrorCode status = U_ZERO_ERROR;
    if (form == "NFC") normalizer_ = icu::Normalizer2::getNFCInstance(status);
    if (form == "NFD") normalizer_ = icu::Normalizer2::getNFDInstance(status);
    if (form == "NFKC") normalizer_ = icu::Normalizer2::getNFKCInstance(status);
    if (form == "NFKD") normalizer_ = icu::Normalizer2::getNFKDInstance(status);
    if (U_FAILURE(status) || !normalizer_) fail("ICU has no {} normalizer: {}", form, u_errorName(status));
  }
  void normalize(std::string& text) const override {
    transform_valid_runs(text, [&](std::string_view run) {
      UErrorCode status = U_ZERO_ERROR;
      icu::UnicodeString result =
          normalizer_->normalize(icu::UnicodeString::fromUTF8(icu::StringPiece(run.data(), run.size())), status);
      if (U_FAILURE(status)) fail("unicode normalization failed: {}", u_errorName(status));
      std::string out;
      result.toUTF8String(out);
      return out;
    });
  }

 private:
  const icu::Normalizer2* normalizer_ = nullptr;
};

// HF lowercases character by character (Rust char::to_lowercase: full mapping, no context such as final sigma).
class LowercaseNormalizer : public Normalizer {
 public:
  void normalize(std::string& text) const override {
    std::string out;
    out.reserve(text.size());
    size_t pos = 0;
    while (pos < text.size()) {
      const auto d = utf8::decode_at(text, pos);
      if (d.code_point < 0x80) {
        out += static_cast<char>(d.code_point >= 'A' && d.code_point <= 'Z' ? d.code_point + 32 : d.code_point);
      } else if (d.code_point == utf8::kInvalidCodePoint) {
        out += text[pos];
      } else {
        UChar source[2], lowered[8];
        int32_t source_length = 0;
        U16_APPEND_UNSAFE(source, source_length, d.code_point);
        UErrorCode status = U_ZERO_ERROR;
        const int32_t n = u_strToLower(lowered, 8, source, source_length, "", &status);
        if (U_FAILURE(status)) fail("lowercasing failed: {}", u_errorName(status));
        icu::UnicodeString(lowered, n).toUTF8String(out);
      }
      pos += d.length;
    }
    text = std::move(out);
  }
};
#endif

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& spec) {
  if (spec.is_null()) return nullptr;
  const std::string type = spec.at("type").get<std::string>();
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const json& step : spec.at("normalizers"))
      if (auto n = make_normalizer(step)) steps.push_back(std::move(n));
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(spec.at("prepend").get<std::string>());
  if (type == "Replace") {
    const json& pattern = spec.at("pattern");
    const std::string regex = pattern.contains("Regex") ? pattern["Regex"].get<std::string>()
                                                        : escape_regex(pattern.at("String").get<std::string>());
    return std::make_unique<ReplaceNormalizer>(regex, spec.at("content").get<std::string>());
  }
  if (type == "Strip")
    return std::make_unique<StripNormalizer>(spec.value("strip_left", true), spec.value("strip_right", true));
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD" || type == "Lowercase") {
#ifdef MOE_HAVE_ICU
    if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
    return std::make_unique<UnicodeNormalizer>(type);
#else
    fail("tokenizer.json normalizer {} needs Unicode tables; this build of moe has no ICU (install libicu-dev)", type);
#endif
  }
  fail("tokenizer.json: unsupported normalizer type '{}'", type);
}

}  // namespace moe::tok
