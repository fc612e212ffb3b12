#pragma once
// Values of the Jinja interpreter: Python-like (None, bool, int, float, str, list, dict) plus Jinja's Undefined and
// namespace objects. Lists and dicts are shared by reference, like Python objects; a namespace is a dict whose
// attributes `{% set ns.x = ... %}` may change.
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace moe::jinja {

// Bounds on what one render may build, so a hostile or broken template fails with an error instead of
// exhausting memory or time: text (the output or any string), list length, range() length (Jinja2's sandbox,
// which transformers renders in, allows 100,000), loop iterations and the pairwise comparisons of unique().
constexpr size_t kMaxTextBytes = size_t(64) << 20;
constexpr size_t kMaxListItems = 1000000;
constexpr int64_t kMaxRange = 100000;
constexpr int64_t kMaxLoopIterations = 1000000;
constexpr int64_t kMaxComparisons = 10000000;  // unique(): pairwise, so bounded separately
// Fails when a string of `bytes` would pass kMaxTextBytes.
void check_text_size(double bytes, const char* what);

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion-ordered, string keys

struct Value {
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace };
  Kind kind = Kind::Undefined;
  bool boolean = false;
  int64_t integer = 0;
  double number = 0;
  std::string string;  // String; for Undefined, the name that was looked up (for error messages)
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;  // Dict and Namespace
  bool tuple = false;          // a List written (a, b): printed with parentheses

  static Value undefined(std::string name = "") { Value v; v.string = std::move(name); return v; }
  static Value none() { Value v; v.kind = Kind::None; return v; }
  static Value from(bool b) { Value v; v.kind = Kind::Bool; v.boolean = b; return v; }
  static Value from(int64_t i) { Value v; v.kind = Kind::Int; v.integer = i; return v; }
  static Value from(double d) { Value v; v.kind = Kind::Float; v.number = d; return v; }
  static Value from(std::string s) { Value v; v.kind = Kind::String; v.string = std::move(s); return v; }
  static Value from(List l) { Value v; v.kind = Kind::List; v.list = std::make_shared<List>(std::move(l)); return v; }
  static Value make_tuple(List l) { Value v = from(std::move(l)); v.tuple = true; return v; }
  static Value from(Dict d) { Value v; v.kind = Kind::Dict; v.dict = std::make_shared<Dict>(std::move(d)); return v; }
  static Value make_namespace(Dict d) { Value v = from(std::move(d)); v.kind = Kind::Namespace; return v; }
  // From nlohmann::json (object keys sorted) or nlohmann::ordered_json (insertion order kept, as Python would).
  // Fails (moe::Error) on nesting deeper than kMaxJsonDepth (core/json_depth.h), checked before recursing.
  static Value from_json(const nlohmann::json& j);
  static Value from_json(const nlohmann::ordered_json& j);

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_none() const { return kind == Kind::None; }
  bool is_string() const { return kind == Kind::String; }
  bool is_number() const { return kind == Kind::Int || kind == Kind::Float; }
  bool is_mapping() const { return kind == Kind::Dict || kind == Kind::Namespace; }
  bool truthy() const;
  double as_double() const { return kind == Kind::Int ? static_cast<double>(integer) : number; }

  const Value* find(const std::string& key) const;  // dict/namespace member, or nullptr
  void set(const std::string& key, Value value);    // dict/namespace member

  std::string str() const;   // Python str()
  std::string repr() const;  // Python repr()
  // Python json.dumps(ensure_ascii=False) with the given indent (< 0: none) and default separators.
  std::string to_json(int indent = -1, int depth = 0) const;
  const char* type_name() const;
};

bool equals(const Value& a, const Value& b);
// Items a for-loop or `in` sees: list items, dict keys, string characters.
List iterate(const Value& v);  // a string gives its characters (at most kMaxListItems of them)
// Byte offset of each UTF-8 character of s, then s.size(): character i is s[starts[i], starts[i + 1]).
std::vector<uint32_t> char_starts(const std::string& s);

}  // namespace moe::jinja
