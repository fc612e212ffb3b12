// Decoders: ByteLevel, ByteFallback, Metaspace, Fuse, Strip, Replace, BPEDecoder, Sequence. Each maps the list of
// token strings to a new list; the text is their concatenation. Semantics follow HF tokenizers' decoders module.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/components.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace moe::tok {
namespace {

using json = nlohmann::json;

std::string join(const std::vector<std::string>& tokens) {
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void decode(std::vector<std::string>& tokens, bool raw) const override {
    for (const auto& step : steps_) step->decode(tokens, raw);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

// Byte-level characters back to bytes; a token holding any other character contributes its own UTF-8 bytes.
class ByteLevelDecoder : public Decoder {
 public:
  void decode(std::vector<std::string>& tokens, bool raw) const override {
    std::string bytes;
    for (const std::string& token : tokens) {
      const size_t mark = bytes.size();
      bool all_mapped = true;
      for (size_t pos = 0; pos < token.size();) {
        const auto d = utf8::decode_at(token, pos);
        const int byte = d.code_point == utf8::kInvalidCodePoint ? -1 : utf8::char_to_byte(d.code_point);
        if (byte < 0) {
          all_mapped = false;
          break;
        }
        bytes += static_cast<char>(byte);
        pos += d.length;
      }
      if (!all_mapped) {
        bytes.resize(mark);
        bytes += token;
      }
    }
    tokens.assign(1, raw ? std::move(bytes) : utf8::lossy(bytes));
  }
};

// <0xHH> tokens become bytes; a run of them that is not valid UTF-8 becomes one U+FFFD per byte (HF's rule).
class ByteFallbackDecoder : public Decoder {
 public:
  void decode(std::vector<std::string>& tokens, bool raw) const override {
    std::vector<std::string> out;
    std::string pending;
    const auto flush = [&] {
      if (pending.empty()) return;
      if (raw || utf8::lossy(pending) == pending) {
        out.push_back(pending);
      } else {
        std::string replacement;
        for (size_t i = 0; i < pending.size(); ++i) replacement += "\xEF\xBF\xBD";
        out.push_back(replacement);
      }
      pending.clear();
    };
    for (std::string& token : tokens) {
      int byte = -1;
      if (token.size() == 6 && token.compare(0, 3, "<0x") == 0 && token[5] == '>' && std::isxdigit(token[3]) &&
          std::isxdigit(token[4]))
        byte = std::stoi(token.substr(3, 2), nullptr, 16);
      if (byte >= 0) {
        pending += static_cast<char>(byte);
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    tokens = std::move(out);
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first) : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  void decode(std::vector<std::string>& tokens, bool) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      // HF drops every replacement character of the first token (not just a leading one) unless prepending is off.
      const std::string with = i == 0 && strip_first_ ? "" : " ";
      std::string out;
      const std::string& token = tokens[i];
      for (size_t pos = 0; pos < token.size();) {
        if (!replacement_.empty() && token.compare(pos, replacement_.size(), replacement_) == 0) {
          out += with;
          pos += replacement_.size();
        } else {
          out += token[pos++];
        }
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class FuseDecoder : public Decoder {
 public:
  void decode(std::vector<std::string>& tokens, bool) const override { tokens.assign(1, join(tokens)); }
};

class StripDecoder : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  void decode(std::vector<std::string>& tokens, bool) const override {
    for (std::string& token : tokens) {
      std::vector<std::pair<char32_t, size_t>> chars;  // (code point, byte offset)
      for (size_t pos = 0; pos < token.size();) {
        const auto d = utf8::decode_at(token, pos);
        chars.push_back({d.code_point, pos});
        pos += d.length;
      }
      size_t start_cut = 0, stop_cut = 0;
      while (start_cut < start_ && start_cut < chars.size() && chars[start_cut].first == content_) ++start_cut;
      while (stop_cut < stop_ && stop_cut < chars.size() && chars[chars.size() - 1 - stop_cut].first == content_)
        ++stop_cut;
      // HF keeps (byte length - start_cut - stop_cut) characters after the cut; reproduced as is.
      const size_t keep_chars = token.size() >= start_cut + stop_cut ? token.size() - start_cut - stop_cut : 0;
      const size_t first = std::min(start_cut, chars.size());
      const size_t last = std::min(chars.size(), first + keep_chars);
      const size_t begin_byte = first < chars.size() ? chars[first].second : token.size();
      const size_t end_byte = last < chars.size() ? chars[last].second : token.size();
      token = token.substr(begin_byte, end_byte - begin_byte);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(const std::string& pattern, std::string content) : regex_(pattern), content_(std::move(content)) {}
  void decode(std::vector<std::string>& tokens, bool) const override {
    for (std::string& token : tokens) {
      std::string out;
      size_t last = 0;
      regex_.find_all(token, [&](size_t start, size_t end) {
        out.append(token, last, start - last);
        out += content_;
        last = end;
      });
      out.append(token, last, std::string::npos);
      token = std::move(out);
    }
  }

 private:
  Regex regex_;
  std::string content_;
};

// BPEDecoder: the end-of-word suffix becomes a space, except on the last token.
class SuffixDecoder : public Decoder {
 public:
  explicit SuffixDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode(std::vector<std::string>& tokens, bool) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      const std::string with = i + 1 == tokens.size() ? "" : " ";
      for (size_t pos = 0; !suffix_.empty() && (pos = t.find(suffix_, pos)) != std::string::npos; pos += with.size())
        t.replace(pos, suffix_.size(), with);
    }
  }

 private:
  std::string suffix_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const json& spec) {
  if (spec.is_null()) return nullptr;
  const std::string type = spec.at("type").get<std::string>();
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> steps;
    for (const json& step : spec.at("decoders"))
      if (auto d = make_decoder(step)) steps.push_back(std::move(d));
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Metaspace") {
    std::string scheme = spec.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = spec.value("add_prefix_space", true) ? "always" : "never";
    return std::make_unique<MetaspaceDecoder>(spec.value("replacement", std::string("\u2581")), scheme != "never");
  }
  if (type == "Strip") {
    const std::string content = spec.at("content").get<std::string>();
    const auto d = utf8::decode_at(content, 0);
    if (content.empty() || static_cast<size_t>(d.length) != content.size())
      fail("tokenizer.json: Strip decoder content must be one character, got '{}'", content);
    return std::make_unique<StripDecoder>(d.code_point, spec.value("start", size_t{0}), spec.value("stop", size_t{0}));
  }
  if (type == "Replace") {
    const json& pattern = spec.at("pattern");
    const std::string regex = pattern.contains("Regex") ? pattern["Regex"].get<std::string>()
                                                        : escape_regex(pattern.at("String").get<std::string>());
    return std::make_unique<ReplaceDecoder>(regex, spec.at("content").get<std::string>());
  }
  if (type == "BPEDecoder") return std::make_unique<SuffixDecoder>(spec.value("suffix", std::string("</w>")));
  fail("tokenizer.json: unsupported decoder type '{}'", type);
}

}  // namespace moe::tok
