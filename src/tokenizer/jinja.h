#pragma once
// A Jinja2 subset interpreter, enough for Hugging Face chat templates: {{ }}, {% if/elif/else %}, {% for %} (with
// loop.*, else, an `if` filter, tuple targets, break/continue), {% set %} (names, namespace attributes, blocks),
// {# #}, whitespace control (-, +) with the trim_blocks / lstrip_blocks options transformers turns on, Python-style
// expressions, and the filters, tests and str/dict methods chat templates use. Anything else is a moe::Error
// naming it, at parse time where possible.
#include <nlohmann/json_fwd.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace moe::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal, Name, ListLiteral, DictLiteral, Attribute, Subscript, Slice, Call, Filter, Test,
    Negate, Not, And, Or, Binary, Compare, Ternary
  };
  Kind kind;
  Value literal;
  std::string name;           // Name, Attribute, Filter, Test; the operator for Binary / Compare
  bool negated = false;       // Test: `is not`; Compare: `not in`
  std::vector<ExprPtr> args;  // operands, call arguments (the callee / filtered value first), list items, dict k/v
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  explicit Expr(Kind k) : kind(k) {}
};

struct Node;
using Body = std::vector<Node>;

struct Node {
  enum class Kind { Text, Output, If, For, Set, SetBlock, Break, Continue };
  Kind kind;
  std::string text;                                  // Text
  ExprPtr expr;                                      // Output, Set value, For iterable
  ExprPtr target;                                    // Set / SetBlock target (Name or Attribute)
  std::vector<std::pair<ExprPtr, Body>> branches;    // If: (condition or null for else, body)
  std::vector<std::string> loop_vars;                // For
  ExprPtr loop_filter;                               // For ... if cond
  Body body, else_body;                              // For, SetBlock
  explicit Node(Kind k) : kind(k) {}
};

// Parses the template source (transformers' environment: trim_blocks, lstrip_blocks, no trailing newline kept).
Body parse(std::string_view source);

class Template {
 public:
  explicit Template(std::string_view source) : body_(parse(source)) {}
  // context: a JSON object of top-level variables.
  std::string render(const nlohmann::json& context) const;
  std::string render(const nlohmann::ordered_json& context) const;  // keeps the caller's key order

 private:
  Body body_;
};

}  // namespace moe::jinja
