// Jinja parsing: segments -> statement tree, tag contents -> expression trees (Jinja2's operator precedence).
#include <fmt/format.h>

#include "core/error.h"
#include "tokenizer/jinja.h"
#include "tokenizer/jinja_lexer.h"

namespace moe::jinja {
namespace {

ExprPtr make(Expr::Kind kind) { return std::make_unique<Expr>(kind); }

class ExpressionParser {
 public:
  explicit ExpressionParser(std::string_view content) : content_(content), tokens_(tokenize_expression(content)) {}

  const Token& peek(size_t ahead = 0) const { return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)]; }
  bool at_end() const { return peek().kind == Token::Kind::End; }
  bool is_op(std::string_view op, size_t ahead = 0) const {
    return peek(ahead).kind == Token::Kind::Operator && peek(ahead).text == op;
  }
  bool is_name(std::string_view name, size_t ahead = 0) const {
    return peek(ahead).kind == Token::Kind::Name && peek(ahead).text == name;
  }
  bool accept_op(std::string_view op) {
    if (!is_op(op)) return false;
    ++pos_;
    return true;
  }
  bool accept_name(std::string_view name) {
    if (!is_name(name)) return false;
    ++pos_;
    return true;
  }
  void expect_op(std::string_view op) {
    if (!accept_op(op)) error(fmt::format("expected '{}'", op));
  }
  std::string expect_identifier() {
    if (peek().kind != Token::Kind::Name) error("expected a name");
    return tokens_[pos_++].text;
  }
  void expect_end() {
    if (!at_end()) error(fmt::format("unexpected '{}'", peek().text));
  }
  // Recursion (nesting, chains of `not` or signs) is bounded so a hostile template cannot exhaust the stack.
  struct Nesting {
    int* depth;
    explicit Nesting(int* d) : depth(d) {}
    Nesting(const Nesting&) = delete;
    ~Nesting() { --*depth; }
  };
  Nesting nest() {
    if (++depth_ > kMaxDepth) error("expression nested too deeply");
    return Nesting(&depth_);
  }

  [[noreturn]] void error(const std::string& what) const {
    fail("chat template: {} in '{}'", what, content_);
  }

  // expression := or ['if' or ['else' expression]]
  ExprPtr expression() {
    const auto guard = nest();
    ExprPtr value = or_expr();
    if (accept_name("if")) {
      auto node = make(Expr::Kind::Ternary);
      ExprPtr condition = or_expr();
      ExprPtr otherwise = accept_name("else") ? expression() : nullptr;
      node->args.push_back(std::move(condition));
      node->args.push_back(std::move(value));
      if (otherwise) node->args.push_back(std::move(otherwise));
      return node;
    }
    return value;
  }
  // Like expression(), but a bare a, b makes a tuple (list).
  ExprPtr tuple_or_expression() {
    ExprPtr first = expression();
    if (!is_op(",")) return first;
    auto list = make(Expr::Kind::ListLiteral);
    list->name = "tuple";
    list->args.push_back(std::move(first));
    while (accept_op(",")) {
      if (at_end()) break;
      list->args.push_back(expression());
    }
    return list;
  }
  // An or-expression without a ternary: for-loop iterables (`for x in xs if cond`).
  ExprPtr or_expr() {
    ExprPtr left = and_expr();
    while (accept_name("or")) left = binary(Expr::Kind::Or, "or", std::move(left), and_expr());
    return left;
  }

 private:
  ExprPtr binary(Expr::Kind kind, std::string op, ExprPtr left, ExprPtr right) {
    auto node = make(kind);
    node->name = std::move(op);
    node->args.push_back(std::move(left));
    node->args.push_back(std::move(right));
    return node;
  }
  ExprPtr and_expr() {
    ExprPtr left = not_expr();
    while (accept_name("and")) left = binary(Expr::Kind::And, "and", std::move(left), not_expr());
    return left;
  }
  ExprPtr not_expr() {
    const auto guard = nest();
    if (accept_name("not")) {
      auto node = make(Expr::Kind::Not);
      node->args.push_back(not_expr());
      return node;
    }
    return compare();
  }
  ExprPtr compare() {
    ExprPtr left = math1();
    for (;;) {
      std::string op;
      bool negated = false;
      if (peek().kind == Token::Kind::Operator &&
          (peek().text == "==" || peek().text == "!=" || peek().text == "<" || peek().text == ">" ||
           peek().text == "<=" || peek().text == ">=")) {
        op = tokens_[pos_++].text;
      } else if (accept_name("in")) {
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        pos_ += 2;
        op = "in";
        negated = true;
      } else {
        return left;
      }
      auto node = binary(Expr::Kind::Compare, op, std::move(left), math1());
      node->negated = negated;
      left = std::move(node);
    }
  }
  ExprPtr math1() {
    ExprPtr left = concat();
    while (is_op("+") || is_op("-")) {
      const std::string op = tokens_[pos_++].text;
      left = binary(Expr::Kind::Binary, op, std::move(left), concat());
    }
    return left;
  }
  ExprPtr concat() {
    ExprPtr left = math2();
    while (accept_op("~")) left = binary(Expr::Kind::Binary, "~", std::move(left), math2());
    return left;
  }
  ExprPtr math2() {
    ExprPtr left = power();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string op = tokens_[pos_++].text;
      left = binary(Expr::Kind::Binary, op, std::move(left), power());
    }
    return left;
  }
  ExprPtr power() {
    ExprPtr left = unary();
    while (accept_op("**")) left = binary(Expr::Kind::Binary, "**", std::move(left), unary());
    return left;
  }
  // Jinja2: a sign applies to the bare operand and filters then apply to the signed value (-3|abs is 3).
  ExprPtr unary(bool with_filters = true) {
    const auto guard = nest();
    ExprPtr value;
    if (accept_op("-")) {
      value = make(Expr::Kind::Negate);
      value->args.push_back(unary(false));
    } else if (accept_op("+")) {
      value = unary(false);
    } else {
      value = postfix(primary());
    }
    return with_filters ? filters_and_tests(std::move(value)) : std::move(value);
  }
  void call_arguments(Expr& call) {
    // '(' already consumed
    if (accept_op(")")) return;
    do {
      if (is_op(")")) break;
      if (peek().kind == Token::Kind::Name && is_op("=", 1)) {
        std::string key = tokens_[pos_].text;
        pos_ += 2;
        call.kwargs.emplace_back(std::move(key), expression());
      } else {
        call.args.push_back(expression());
      }
    } while (accept_op(","));
    expect_op(")");
  }
  ExprPtr postfix(ExprPtr value) {
    for (;;) {
      if (accept_op(".")) {
        auto node = make(Expr::Kind::Attribute);
        node->name = peek().kind == Token::Kind::Integer ? tokens_[pos_++].text : expect_identifier();
        node->args.push_back(std::move(value));
        value = std::move(node);
      } else if (accept_op("[")) {
        ExprPtr index[3];
        bool slice = false;
        for (int part = 0; part < 3; ++part) {
          if (!is_op(":") && !is_op("]")) index[part] = expression();
          if (part < 2 && accept_op(":")) {
            slice = true;
            continue;
          }
          break;
        }
        expect_op("]");
        if (!slice && !index[0]) error("empty subscript: x[] needs an index or a slice");
        auto node = make(slice ? Expr::Kind::Slice : Expr::Kind::Subscript);
        node->args.push_back(std::move(value));
        for (auto& part : index) node->args.push_back(std::move(part));  // null parts are omitted bounds
        if (!slice) node->args.resize(2);
        value = std::move(node);
      } else if (accept_op("(")) {
        auto node = make(Expr::Kind::Call);
        node->args.push_back(std::move(value));
        call_arguments(*node);
        value = std::move(node);
      } else {
        return value;
      }
    }
  }
  ExprPtr filters_and_tests(ExprPtr value) {
    for (;;) {
      if (accept_op("|")) {
        auto node = make(Expr::Kind::Filter);
        node->name = expect_identifier();
        node->args.push_back(std::move(value));
        if (accept_op("(")) call_arguments(*node);
        value = std::move(node);
      } else if (accept_name("is")) {
        auto node = make(Expr::Kind::Test);
        node->negated = accept_name("not");
        node->name = expect_identifier();
        node->args.push_back(std::move(value));
        if (accept_op("(")) {
          call_arguments(*node);
        } else if (!at_end() && (peek().kind != Token::Kind::Name ||
                                 !(is_name("and") || is_name("or") || is_name("if") || is_name("else") ||
                                   is_name("in") || is_name("not") || is_name("is")))) {
          if (!is_op(")") && !is_op("]") && !is_op(",") && !is_op("}") && !is_op(":") && peek().kind != Token::Kind::Operator)
            node->args.push_back(primary());  // `is divisibleby 3`, `is sameas none`
        }
        value = std::move(node);
      } else {
        return value;
      }
    }
  }
  ExprPtr primary() {
    const Token& t = peek();
    if (t.kind == Token::Kind::String) {
      auto node = make(Expr::Kind::Literal);
      node->literal = Value::from(t.text);
      ++pos_;
      while (peek().kind == Token::Kind::String) node->literal.string += tokens_[pos_++].text;  // 'a' 'b'
      return node;
    }
    if (t.kind == Token::Kind::Integer || t.kind == Token::Kind::Float) {
      auto node = make(Expr::Kind::Literal);
      node->literal = t.kind == Token::Kind::Integer ? Value::from(t.integer) : Value::from(t.number);
      ++pos_;
      return node;
    }
    if (t.kind == Token::Kind::Name) {
      ++pos_;
      auto node = make(Expr::Kind::Literal);
      if (t.text == "true" || t.text == "True") node->literal = Value::from(true);
      else if (t.text == "false" || t.text == "False") node->literal = Value::from(false);
      else if (t.text == "none" || t.text == "None") node->literal = Value::none();
      else {
        node->kind = Expr::Kind::Name;
        node->name = t.text;
      }
      return node;
    }
    if (accept_op("(")) {
      if (accept_op(")")) {
        auto empty = make(Expr::Kind::ListLiteral);
        empty->name = "tuple";
        return empty;
      }
      ExprPtr inner = tuple_or_expression();
      expect_op(")");
      return inner;
    }
    if (accept_op("[")) {
      auto node = make(Expr::Kind::ListLiteral);
      while (!accept_op("]")) {
        node->args.push_back(expression());
        if (!accept_op(",")) {
          expect_op("]");
          break;
        }
      }
      return node;
    }
    if (accept_op("{")) {
      auto node = make(Expr::Kind::DictLiteral);
      while (!accept_op("}")) {
        node->args.push_back(expression());
        expect_op(":");
        node->args.push_back(expression());
        if (!accept_op(",")) {
          expect_op("}");
          break;
        }
      }
      return node;
    }
    error(at_end() ? "unexpected end of expression" : fmt::format("unexpected '{}'", t.text));
  }

  static constexpr int kMaxDepth = 300;
  std::string_view content_;
  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
};

class TemplateParser {
 public:
  explicit TemplateParser(std::vector<Segment> segments) : segments_(std::move(segments)) {}

  Body parse_all() {
    Body body = parse_body({});
    if (pos_ < segments_.size()) fail("chat template: unexpected {{% {} %}}", keyword(segments_[pos_]));
    return body;
  }

 private:
  static std::string keyword(const Segment& s) {
    ExpressionParser p(s.text);
    return p.peek().kind == Token::Kind::Name ? p.peek().text : s.text;
  }

  // Parses nodes until a statement whose keyword is one of `stops` (left unconsumed) or the end.
  Body parse_body(const std::vector<std::string>& stops) {
    if (++depth_ > 200) fail("chat template: blocks nested too deeply");
    struct Leave {
      int& depth;
      ~Leave() { --depth; }
    } leave{depth_};
    Body body;
    while (pos_ < segments_.size()) {
      const Segment& s = segments_[pos_];
      if (s.kind == Segment::Kind::Text) {
        Node node(Node::Kind::Text);
        node.text = s.text;
        body.push_back(std::move(node));
        ++pos_;
        continue;
      }
      if (s.kind == Segment::Kind::Expression) {
        ExpressionParser p(s.text);
        Node node(Node::Kind::Output);
        node.expr = p.expression();
        p.expect_end();
        body.push_back(std::move(node));
        ++pos_;
        continue;
      }
      const std::string word = keyword(s);
      for (const auto& stop : stops)
        if (word == stop) return body;
      ++pos_;
      body.push_back(statement(word, s.text));
    }
    if (!stops.empty()) fail("chat template: missing {{% {} %}}", stops.back());
    return body;
  }

  Node statement(const std::string& word, const std::string& content) {
    ExpressionParser p(content);
    p.expect_identifier();  // the keyword
    if (word == "if") {
      Node node(Node::Kind::If);
      ExprPtr condition = p.expression();
      p.expect_end();
      for (;;) {
        Body branch = parse_body({"elif", "else", "endif"});
        node.branches.emplace_back(std::move(condition), std::move(branch));
        const std::string next = keyword(segments_[pos_]);
        ExpressionParser q(segments_[pos_++].text);
        q.expect_identifier();
        if (next == "elif") {
          condition = q.expression();
          q.expect_end();
        } else if (next == "else") {
          q.expect_end();
          node.branches.emplace_back(nullptr, parse_body({"endif"}));
          ++pos_;
          break;
        } else {
          break;
        }
      }
      return node;
    }
    if (word == "for") {
      Node node(Node::Kind::For);
      do node.loop_vars.push_back(p.expect_identifier());
      while (p.accept_op(","));
      if (!p.accept_name("in")) p.error("expected 'in'");
      node.expr = p.or_expr();
      if (p.accept_name("if")) node.loop_filter = p.or_expr();
      if (p.accept_name("recursive")) p.error("recursive loops are not supported");
      p.expect_end();
      node.body = parse_body({"else", "endfor"});
      if (keyword(segments_[pos_++]) == "else") {
        node.else_body = parse_body({"endfor"});
        ++pos_;
      }
      return node;
    }
    if (word == "set") {
      ExprPtr target = make(Expr::Kind::Name);
      target->name = p.expect_identifier();
      if (p.accept_op(".")) {
        auto attribute = make(Expr::Kind::Attribute);
        attribute->name = p.expect_identifier();
        attribute->args.push_back(std::move(target));
        target = std::move(attribute);
      }
      if (p.accept_op("=")) {
        Node node(Node::Kind::Set);
        node.target = std::move(target);
        node.expr = p.tuple_or_expression();
        p.expect_end();
        return node;
      }
      p.expect_end();
      Node node(Node::Kind::SetBlock);
      node.target = std::move(target);
      node.body = parse_body({"endset"});
      ++pos_;
      return node;
    }
    if (word == "break" || word == "continue") {
      p.expect_end();
      return Node(word == "break" ? Node::Kind::Break : Node::Kind::Continue);
    }
    if (word == "generation" || word == "endgeneration") {  // transformers' assistant-mask markers: no output
      p.expect_end();
      Node node(Node::Kind::Text);
      return node;
    }
    fail("chat template: unsupported statement {{% {} %}}", word);
  }

  std::vector<Segment> segments_;
  size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace

Body parse(std::string_view source) { return TemplateParser(split_template(source)).parse_all(); }

}  // namespace moe::jinja
