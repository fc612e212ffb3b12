// Jinja evaluation: statements and expressions (the builtin filters, tests and methods are in jinja_builtins.cpp).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "tokenizer/jinja.h"
#include "tokenizer/jinja_builtins.h"

namespace moe::jinja {
namespace {

// Whether v holds the dict `target` at any depth. A namespace that held itself would be a reference cycle:
// never freed (shared ownership) and never done printing. `seen` keeps the walk linear on shared values.
bool holds(const Value& v, const Dict* target, std::unordered_set<const void*>& seen) {
  if (v.kind == Value::Kind::List) {
    if (!seen.insert(v.list.get()).second) return false;
    return std::any_of(v.list->begin(), v.list->end(), [&](const Value& item) { return holds(item, target, seen); });
  }
  if (v.kind == Value::Kind::Dict || v.kind == Value::Kind::Namespace) {
    if (v.dict.get() == target) return true;
    if (!seen.insert(v.dict.get()).second) return false;
    return std::any_of(v.dict->begin(), v.dict->end(), [&](const auto& item) { return holds(item.second, target, seen); });
  }
  return false;
}

class Renderer {
 public:
  template <typename Json>
  explicit Renderer(const Json& context) {
    scopes_.emplace_back();
    for (const auto& [k, v] : context.items()) scopes_.back()[k] = Value::from_json(v);
  }

  enum class Flow { Normal, Break, Continue };

  Flow exec(const Body& body, std::string& out) {
    for (const Node& node : body) {
      const Flow flow = exec(node, out);
      if (flow != Flow::Normal) return flow;
    }
    return Flow::Normal;
  }

 private:
  Flow exec(const Node& node, std::string& out) {
    switch (node.kind) {
      case Node::Kind::Text: return append(out, node.text);
      case Node::Kind::Output: return append(out, eval(*node.expr).str());
      case Node::Kind::If:
        for (const auto& [condition, body] : node.branches)
          if (!condition || eval(*condition).truthy()) return exec(body, out);
        return Flow::Normal;
      case Node::Kind::For: return exec_for(node, out);
      case Node::Kind::Set: assign(*node.target, eval(*node.expr)); return Flow::Normal;
      case Node::Kind::SetBlock: {
        std::string captured;
        exec(node.body, captured);
        assign(*node.target, Value::from(std::move(captured)));
        return Flow::Normal;
      }
      case Node::Kind::Break: return Flow::Break;
      case Node::Kind::Continue: return Flow::Continue;
    }
    return Flow::Normal;
  }

  Flow append(std::string& out, const std::string& text) {
    check_text_size(double(out.size()) + double(text.size()), "the output");
    out += text;
    return Flow::Normal;
  }
  // One more loop iteration (or loop-filter test) of the render's kMaxLoopIterations.
  void count_iteration() {
    if (++iterations_ > kMaxLoopIterations)
      fail("chat template: more than {} loop iterations in one render", kMaxLoopIterations);
  }

  Flow exec_for(const Node& node, std::string& out) {
    const Value iterable = eval(*node.expr);
    List items = iterate(iterable);
    scopes_.emplace_back();
    const auto bind = [&](const Value& item) {
      if (node.loop_vars.size() == 1) {
        scopes_.back()[node.loop_vars[0]] = item;
        return;
      }
      const List parts = iterate(item);
      if (parts.size() != node.loop_vars.size())
        fail("chat template: cannot unpack {} values into {} loop variables", parts.size(), node.loop_vars.size());
      for (size_t i = 0; i < parts.size(); ++i) scopes_.back()[node.loop_vars[i]] = parts[i];
    };
    if (node.loop_filter) {
      List kept;
      for (const Value& item : items) {
        count_iteration();
        bind(item);
        if (eval(*node.loop_filter).truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const auto n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      count_iteration();
      bind(items[i]);
      Dict loop{{"index", Value::from(i + 1)},      {"index0", Value::from(i)},
                {"revindex", Value::from(n - i)},   {"revindex0", Value::from(n - i - 1)},
                {"first", Value::from(i == 0)},     {"last", Value::from(i == n - 1)},
                {"length", Value::from(n)},
                {"previtem", i > 0 ? items[i - 1] : Value::undefined("loop.previtem")},
                {"nextitem", i + 1 < n ? items[i + 1] : Value::undefined("loop.nextitem")}};
      scopes_.back()["loop"] = Value::from(std::move(loop));
      if (exec(node.body, out) == Flow::Break) break;
    }
    scopes_.pop_back();
    if (n == 0) return exec(node.else_body, out);
    return Flow::Normal;
  }

  void assign(const Expr& target, Value value) {
    if (target.kind == Expr::Kind::Name) {
      scopes_.back()[target.name] = std::move(value);
      return;
    }
    Value object = eval(*target.args[0]);
    if (object.kind != Value::Kind::Namespace)
      fail("chat template: cannot set attribute '{}' on a {} (only on a namespace)", target.name, object.type_name());
    std::unordered_set<const void*> seen;
    if (holds(value, object.dict.get(), seen))
      fail("chat template: a namespace cannot contain itself (set {}.{})", target.args[0]->name, target.name);
    object.set(target.name, std::move(value));
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      const auto found = it->find(name);
      if (found != it->end()) return found->second;
    }
    return Value::undefined(name);
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal: return e.literal;
      case Expr::Kind::Name: return lookup(e.name);
      case Expr::Kind::ListLiteral: {
        List l;
        for (const auto& item : e.args) l.push_back(eval(*item));
        return e.name == "tuple" ? Value::make_tuple(std::move(l)) : Value::from(std::move(l));
      }
      case Expr::Kind::DictLiteral: {
        Value d = Value::from(Dict{});
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) d.set(eval(*e.args[i]).str(), eval(*e.args[i + 1]));
        return d;
      }
      case Expr::Kind::Attribute: return attribute_of(eval(*e.args[0]), e.name);
      case Expr::Kind::Subscript: return subscript(eval(*e.args[0]), eval(*e.args[1]));
      case Expr::Kind::Slice: {
        const Value object = eval(*e.args[0]);
        Value parts[3];
        for (int i = 0; i < 3; ++i)
          if (e.args[i + 1]) parts[i] = eval(*e.args[i + 1]);
        return slice(object, e.args[1] ? &parts[0] : nullptr, e.args[2] ? &parts[1] : nullptr,
                     e.args[3] ? &parts[2] : nullptr);
      }
      case Expr::Kind::Call: return call(e);
      case Expr::Kind::Filter: {
        Args args;
        for (const auto& a : e.args) args.push_back(eval(*a));
        return call_filter(e.name, args, eval_kwargs(e));
      }
      case Expr::Kind::Test: {
        Args args;
        for (const auto& a : e.args) args.push_back(eval(*a));
        return Value::from(call_test(e.name, args) != e.negated);
      }
      case Expr::Kind::Negate: {
        const Value v = require_defined(eval(*e.args[0]));
        if (v.kind == Value::Kind::Int) return arithmetic("-", Value::from(int64_t{0}), v);  // -INT64_MIN fails
        if (v.kind == Value::Kind::Float) return Value::from(-v.number);
        fail("chat template: bad operand type for unary -: '{}'", v.type_name());
      }
      case Expr::Kind::Not: return Value::from(!eval(*e.args[0]).truthy());
      case Expr::Kind::And: {
        Value left = eval(*e.args[0]);
        return left.truthy() ? eval(*e.args[1]) : left;
      }
      case Expr::Kind::Or: {
        Value left = eval(*e.args[0]);
        return left.truthy() ? left : eval(*e.args[1]);
      }
      case Expr::Kind::Binary: return arithmetic(e.name, eval(*e.args[0]), eval(*e.args[1]));
      case Expr::Kind::Compare: {
        const Value a = eval(*e.args[0]), b = eval(*e.args[1]);
        bool result;
        if (e.name == "==") result = equals(a, b);
        else if (e.name == "!=") result = !equals(a, b);
        else if (e.name == "<") result = less_than(a, b);
        else if (e.name == ">") result = less_than(b, a);
        else if (e.name == "<=") result = !less_than(b, a);
        else if (e.name == ">=") result = !less_than(a, b);
        else result = contains(b, a) != e.negated;  // in / not in
        return Value::from(result);
      }
      case Expr::Kind::Ternary: {
        if (eval(*e.args[0]).truthy()) return eval(*e.args[1]);
        return e.args.size() > 2 ? eval(*e.args[2]) : Value::undefined("ternary else");
      }
    }
    return Value::undefined();
  }

  Kwargs eval_kwargs(const Expr& e) {
    Kwargs kwargs;
    for (const auto& [k, v] : e.kwargs) kwargs.emplace_back(k, eval(*v));
    return kwargs;
  }

  Value call(const Expr& e) {
    const Expr& callee = *e.args[0];
    Args args;
    for (size_t i = 1; i < e.args.size(); ++i) args.push_back(eval(*e.args[i]));
    const Kwargs kwargs = eval_kwargs(e);
    if (callee.kind == Expr::Kind::Attribute) return call_method(eval(*callee.args[0]), callee.name, args, kwargs);
    if (callee.kind != Expr::Kind::Name) fail("chat template: this expression cannot be called");
    const std::string& name = callee.name;
    if (name == "namespace") {
      Dict members;
      if (!args.empty() && args[0].is_mapping()) members = *args[0].dict;
      for (const auto& [k, v] : kwargs) members.emplace_back(k, v);
      return Value::make_namespace(std::move(members));
    }
    if (name == "dict") {
      Dict members;
      for (const auto& [k, v] : kwargs) members.emplace_back(k, v);
      return Value::from(std::move(members));
    }
    if (name == "raise_exception")
      fail("chat template raised an exception: {}", args.empty() ? std::string() : args[0].str());
    if (name == "range") {
      int64_t start = 0, stop = 0, step = 1;
      if (args.size() == 1) stop = require_int(args[0], "range");
      else if (args.size() >= 2) start = require_int(args[0], "range"), stop = require_int(args[1], "range");
      if (args.size() >= 3) step = require_int(args[2], "range");
      if (step == 0) fail("chat template: range() step must not be zero");
      // Items in all, in 128 bits: start, stop and step are any int64.
      const __int128 span = step > 0 ? __int128(stop) - start : __int128(start) - stop;
      const __int128 stride = step > 0 ? __int128(step) : -__int128(step);
      const __int128 count = span > 0 ? (span + stride - 1) / stride : 0;
      if (count > kMaxRange)
        fail("chat template: range() of more than {} items (the limit of Jinja2's sandbox)", kMaxRange);
      List l;
      for (int64_t k = 0; k < int64_t(count); ++k) l.push_back(Value::from(start + k * step));
      return Value::from(std::move(l));
    }
    if (name == "strftime_now") {
      const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
      std::tm local{};
      localtime_r(&now, &local);
      char buffer[256];
      const size_t n = std::strftime(buffer, sizeof buffer, require_string(args.at(0), "strftime_now").c_str(), &local);
      return Value::from(std::string(buffer, n));
    }
    const Value v = lookup(name);
    if (v.is_undefined()) fail("chat template: '{}' is undefined", name);
    fail("chat template: '{}' ({}) is not callable", name, v.type_name());
  }

  std::vector<std::unordered_map<std::string, Value>> scopes_;
  int64_t iterations_ = 0;
};

}  // namespace

namespace {
template <typename Json>
std::string render_body(const Body& body, const Json& context) {
  try {
    Renderer renderer(context);
    std::string out;
    renderer.exec(body, out);
    return out;
  } catch (const std::out_of_range&) {  // args.at(i): a filter, test or method called with too few arguments
    fail("chat template: a filter, test or method was called with too few arguments");
  }
}
}  // namespace

std::string Template::render(const nlohmann::json& context) const { return render_body(body_, context); }
std::string Template::render(const nlohmann::ordered_json& context) const { return render_body(body_, context); }

}  // namespace moe::jinja
