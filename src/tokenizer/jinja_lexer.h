#pragma once
// Jinja lexing: the template into text and tags (whitespace control applied, comments dropped), and a tag's
// content into expression tokens.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moe::jinja {

struct Segment {
  enum class Kind { Text, Expression, Statement };
  Kind kind;
  std::string text;  // the text, or the tag's content without delimiters and whitespace-control marks
};
std::vector<Segment> split_template(std::string_view source);

struct Token {
  enum class Kind { Name, String, Integer, Float, Operator, End };
  Kind kind;
  std::string text;  // name, operator, or the unescaped string
  int64_t integer = 0;
  double number = 0;
};
std::vector<Token> tokenize_expression(std::string_view content);

}  // namespace moe::jinja
