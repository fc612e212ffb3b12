#include "tokenizer/jinja_lexer.h"

#include <cctype>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace moe::jinja {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

struct RawTag {
  Segment::Kind kind;  // Text is used for comments (they produce no segment)
  bool comment = false;
  std::string content;
  size_t begin, end;  // source range of the whole tag
  bool strip_before = false, strip_after = false, keep_before = false;
};

// Index just past the closing delimiter of the tag opened at `open`, filling the tag's fields.
RawTag read_tag(std::string_view source, size_t open) {
  RawTag tag;
  tag.begin = open;
  const char type = source[open + 1];
  tag.comment = type == '#';
  tag.kind = type == '{' ? Segment::Kind::Expression : Segment::Kind::Statement;
  size_t pos = open + 2;
  if (pos < source.size() && (source[pos] == '-' || source[pos] == '+')) {
    tag.strip_before = source[pos] == '-';
    tag.keep_before = source[pos] == '+';
    ++pos;
  }
  const char closer = type == '{' ? '}' : type;  // "}}", "%}", "#}"
  const size_t content_begin = pos;
  char quote = 0;
  for (; pos + 1 < source.size(); ++pos) {
    const char c = source[pos];
    if (!tag.comment) {
      if (quote) {
        if (c == '\\') ++pos;
        else if (c == quote) quote = 0;
        continue;
      }
      if (c == '\'' || c == '"') {
        quote = c;
        continue;
      }
    }
    if (c == closer && source[pos + 1] == '}') {
      size_t content_end = pos;
      if (content_end > content_begin && source[content_end - 1] == '-') {
        tag.strip_after = true;
        --content_end;
      } else if (content_end > content_begin && source[content_end - 1] == '+') {
        --content_end;
      }
      tag.content = std::string(source.substr(content_begin, content_end - content_begin));
      tag.end = pos + 2;
      return tag;
    }
  }
  fail("chat template: tag opened at offset {} is never closed", open);
}

}  // namespace

std::vector<Segment> split_template(std::string_view source) {
  if (!source.empty() && source.back() == '\n') {  // keep_trailing_newline=False
    source.remove_suffix(1);
    if (!source.empty() && source.back() == '\r') source.remove_suffix(1);
  }
  std::vector<RawTag> tags;
  for (size_t pos = 0; pos + 1 < source.size();) {
    const size_t open = source.find('{', pos);
    if (open == std::string_view::npos || open + 1 >= source.size()) break;
    const char next = source[open + 1];
    if (next != '{' && next != '%' && next != '#') {
      pos = open + 1;
      continue;
    }
    RawTag tag = read_tag(source, open);
    // {% raw %}...{% endraw %}: the inside is text.
    std::string_view trimmed = tag.content;
    while (!trimmed.empty() && is_space(trimmed.front())) trimmed.remove_prefix(1);
    while (!trimmed.empty() && is_space(trimmed.back())) trimmed.remove_suffix(1);
    if (!tag.comment && tag.kind == Segment::Kind::Statement && trimmed == "raw") {
      size_t search = tag.end;
      for (;;) {
        const size_t candidate = source.find("{%", search);
        if (candidate == std::string_view::npos) fail("chat template: {{% raw %}} without {{% endraw %}}");
        RawTag end_tag = read_tag(source, candidate);
        std::string_view inner = end_tag.content;
        while (!inner.empty() && is_space(inner.front())) inner.remove_prefix(1);
        while (!inner.empty() && is_space(inner.back())) inner.remove_suffix(1);
        if (inner == "endraw") {
          RawTag text_tag;  // the raw body, as a pseudo-tag of kind Text
          text_tag.kind = Segment::Kind::Text;
          text_tag.content = std::string(source.substr(tag.end, candidate - tag.end));
          text_tag.begin = tag.end, text_tag.end = candidate;
          tag.content = "";
          tag.comment = true;  // the raw/endraw tags themselves output nothing
          end_tag.comment = true;
          tags.push_back(std::move(tag));
          tags.push_back(std::move(text_tag));
          tags.push_back(end_tag);
          pos = end_tag.end;
          break;
        }
        search = candidate + 2;
      }
      continue;
    }
    pos = tag.end;
    tags.push_back(std::move(tag));
  }

  std::vector<Segment> segments;
  const auto block_like = [](const RawTag& t) { return t.comment || t.kind == Segment::Kind::Statement; };
  size_t text_begin = 0;
  const RawTag* previous = nullptr;
  const auto emit_text = [&](size_t begin, size_t end, const RawTag* before, const RawTag* after) {
    size_t lo = begin, hi = end;
    if (before && before->strip_after) {
      while (lo < hi && is_space(source[lo])) ++lo;
    } else if (before && block_like(*before)) {  // trim_blocks: the first newline after a block tag goes
      if (lo < hi && source[lo] == '\n') ++lo;
      else if (lo + 1 < hi && source[lo] == '\r' && source[lo + 1] == '\n') lo += 2;
    }
    if (after && after->strip_before) {
      while (hi > lo && is_space(source[hi - 1])) --hi;
    } else if (after && block_like(*after) && !after->keep_before) {  // lstrip_blocks
      size_t run = end;
      while (run > begin && (source[run - 1] == ' ' || source[run - 1] == '\t')) --run;
      const bool at_line_start = run == 0 || source[run - 1] == '\n';
      if (at_line_start && run >= lo) hi = std::min(hi, run);
    }
    if (hi > lo) segments.push_back({Segment::Kind::Text, std::string(source.substr(lo, hi - lo))});
  };
  for (const RawTag& tag : tags) {
    if (tag.kind == Segment::Kind::Text) {  // raw block body: verbatim
      segments.push_back({Segment::Kind::Text, tag.content});
      text_begin = tag.end;
      continue;
    }
    emit_text(text_begin, tag.begin, previous, &tag);
    if (!tag.comment) segments.push_back({tag.kind, tag.content});
    text_begin = tag.end;
    previous = &tag;
  }
  emit_text(text_begin, source.size(), previous, nullptr);
  return segments;
}

namespace {
void append_escape(std::string& out, std::string_view s, size_t& i) {
  // s[i] is the character after a backslash; Python string-literal escapes.
  const char c = s[i];
  const auto hex = [&](int digits) {
    if (i + digits >= s.size()) fail("chat template: truncated escape in string");
    char32_t cp = 0;
    for (int k = 1; k <= digits; ++k) {
      const char h = s[i + k];
      if (!std::isxdigit(static_cast<unsigned char>(h))) fail("chat template: bad \\x/\\u escape in string");
      cp = cp * 16 + static_cast<char32_t>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (h | 0x20) - 'a' + 10);
    }
    if (cp > 0x10FFFF) fail("chat template: escape names no Unicode character");
    i += digits;
    utf8::append(out, cp);
  };
  switch (c) {
    case 'n': out += '\n'; break;
    case 't': out += '\t'; break;
    case 'r': out += '\r'; break;
    case '0': out += '\0'; break;
    case 'a': out += '\a'; break;
    case 'b': out += '\b'; break;
    case 'f': out += '\f'; break;
    case 'v': out += '\v'; break;
    case '\\': out += '\\'; break;
    case '\'': out += '\''; break;
    case '"': out += '"'; break;
    case '\n': break;  // line continuation
    case 'x': hex(2); break;
    case 'u': hex(4); break;
    case 'U': hex(8); break;
    default: out += '\\', out += c;
  }
}
}  // namespace

std::vector<Token> tokenize_expression(std::string_view s) {
  std::vector<Token> tokens;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (is_space(c)) {
      ++i;
      continue;
    }
    if (c == '\'' || c == '"') {
      std::string value;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          ++j;
          append_escape(value, s, j);
        } else {
          value += s[j];
        }
      }
      if (j >= s.size()) fail("chat template: unterminated string literal in '{}'", s);
      tokens.push_back({Token::Kind::String, std::move(value)});
      i = j + 1;
      continue;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      bool is_float = false;
      if (j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]))) {
        is_float = true;
        ++j;
        while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      }
      if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {  // exponent: 1e3, 2.5E-2
        size_t k = j + 1;
        if (k < s.size() && (s[k] == '+' || s[k] == '-')) ++k;
        if (k < s.size() && std::isdigit(static_cast<unsigned char>(s[k]))) {
          is_float = true;
          j = k;
          while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
        }
      }
      std::string digits;
      for (char d : s.substr(i, j - i))
        if (d != '_') digits += d;
      Token t{is_float ? Token::Kind::Float : Token::Kind::Integer, digits};
      try {
        if (is_float) t.number = std::stod(digits);
        else t.integer = std::stoll(digits);
      } catch (const std::exception&) {
        fail("chat template: number {} is out of range", digits);
      }
      tokens.push_back(std::move(t));
      i = j;
      continue;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      tokens.push_back({Token::Kind::Name, std::string(s.substr(i, j - i))});
      i = j;
      continue;
    }
    static constexpr std::string_view kTwoChar[] = {"//", "**", "==", "!=", "<=", ">="};
    bool matched = false;
    for (std::string_view op : kTwoChar)
      if (s.substr(i, 2) == op) {
        tokens.push_back({Token::Kind::Operator, std::string(op)});
        i += 2;
        matched = true;
        break;
      }
    if (matched) continue;
    if (std::string_view("+-*/%~<>=()[]{},.:|").find(c) != std::string_view::npos) {
      tokens.push_back({Token::Kind::Operator, std::string(1, c)});
      ++i;
      continue;
    }
    fail("chat template: unexpected character '{}' in '{}'", c, s);
  }
  tokens.push_back({Token::Kind::End, ""});
  return tokens;
}

}  // namespace moe::jinja
