// JSON Schema compiler: one recursive pass over the schema; $ref targets compiled once each (memoised by the
// reference text), so recursive schemas become cycles in the node graph.
#include "engine/grammar/schema.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "core/error.h"

namespace moe::grammar {

using nlohmann::json;

void ByteTrie::insert(const std::string& s, int32_t value) {
  int32_t n = 0;
  const uint64_t bit = value >= 0 && value < 64 ? uint64_t(1) << value : 0;
  nodes[0].below |= bit;
  for (unsigned char c : s) {
    int32_t next = child(n, c);
    if (next < 0) {
      next = int32_t(nodes.size());
      auto& ch = nodes[size_t(n)].children;
      ch.insert(std::lower_bound(ch.begin(), ch.end(), std::pair<uint8_t, int32_t>(c, -1)), {c, next});
      nodes.push_back(Node{});
    }
    n = next;
    nodes[size_t(n)].below |= bit;
  }
  nodes[size_t(n)].value = value;
}

int32_t ByteTrie::child(int32_t node, uint8_t byte) const {
  for (const auto& [b, c] : nodes[size_t(node)].children)
    if (b == byte) return c;
  return -1;
}

namespace {

constexpr int64_t kIntLimit = 999'999'999'999'999'999;  // 10^18 - 1
constexpr Wide kNumberLimit = Wide(1'000'000'000'000'000) * Wide(1'000'000'000'000'000);  // 10^30: bounded numbers' grid
constexpr size_t kMaxNodes = 1 << 16;         // bounds the work of flatten() and of every mask
constexpr size_t kMaxAlternatives = 256;      // nodes visited resolving one anyOf / $ref

const std::set<std::string> kIgnored = {"description", "title",    "default",    "examples",  "$schema",
                                        "$id",         "$comment", "deprecated", "readOnly",  "writeOnly",
                                        "$defs",       "definitions"};
const std::set<std::string> kSupported = {
    "type",     "properties", "required", "additionalProperties", "items",   "minItems",         "maxItems",
    "enum",     "const",      "minLength", "maxLength",           "minimum", "maximum",          "exclusiveMinimum",
    "exclusiveMaximum",       "anyOf",    "allOf",                "$ref"};
const std::set<std::string> kTypes = {"object", "array", "string", "integer", "number", "boolean", "null"};

std::string where(const std::string& path) { return "#" + path; }
std::string pointer_token(const std::string& key) {  // JSON pointer escaping (RFC 6901)
  std::string out;
  for (char c : key) out += c == '~' ? "~0" : c == '/' ? "~1" : std::string(1, c);
  return out;
}

class Compiler {
 public:
  Compiler(const json& root, SchemaOptions options) : root_(root), options_(options) {
    g_.key_string = g_.add(make_node(Kind::string));
  }

  Grammar run() {
    g_.root = compile(root_, "");
    MOE_CHECK(g_.nodes.size() <= kMaxNodes, "the schema is too large: {} nodes compiled, at most {}", g_.nodes.size(),
              kMaxNodes);
    flatten();
    heights();
    MOE_CHECK(g_.nodes[size_t(g_.root)].height < kNoValue,
              "the schema admits no value: every alternative needs an endless nesting of required values");
    return std::move(g_);
  }

  // Node::height by relaxation: after k passes every height <= k is final (a value of height h needs only values
  // of height < h), and the matcher never needs one above its depth bound, so 64 passes suffice.
  void heights() {
    for (auto& n : g_.nodes) n.height = kNoValue;
    auto h = [&](int32_t id) { return id < 0 ? 1u : g_.nodes[size_t(id)].height; };
    for (int pass = 0; pass < 64; ++pass) {
      bool changed = false;
      for (auto& n : g_.nodes) {
        uint32_t v = 1;
        switch (n.kind) {
          case Kind::array:
            if (n.min_items > 0) v = std::min(kNoValue, 1 + h(n.items));
            break;
          case Kind::object:
            for (size_t i = 0; i < n.prop_nodes.size(); ++i)
              if (n.required >> i & 1) v = std::max(v, std::min(kNoValue, 1 + h(n.prop_nodes[i])));
            break;
          case Kind::any_of:
          case Kind::ref:
            v = kNoValue;
            for (int32_t a : n.alts) v = std::min(v, h(a));
            break;
          default:
            break;
        }
        if (v < n.height) {
          n.height = v;
          changed = true;
        }
      }
      if (!changed) break;
    }
  }

  // Every anyOf and $ref node gets, in `alts`, the concrete nodes it may begin with (anyOf of anyOf and chains
  // of references followed here, once), so a value starts with one fork and no recursion.
  void flatten() {
    std::vector<std::vector<int32_t>> flat(g_.nodes.size());
    for (size_t id = 0; id < g_.nodes.size(); ++id) {
      const Kind k = g_.nodes[id].kind;
      if (k != Kind::any_of && k != Kind::ref) continue;
      std::vector<int32_t> todo = {int32_t(id)}, seen;
      while (!todo.empty()) {
        const int32_t n = todo.back();
        todo.pop_back();
        if (std::find(seen.begin(), seen.end(), n) != seen.end()) continue;
        seen.push_back(n);
        MOE_CHECK(seen.size() <= kMaxAlternatives, "an anyOf in the schema has more than {} alternatives",
                  kMaxAlternatives);
        const Node& node = g_.nodes[size_t(n)];
        if (node.kind == Kind::ref) {
          todo.push_back(node.target);
        } else if (node.kind == Kind::any_of) {
          for (auto it = node.alts.rbegin(); it != node.alts.rend(); ++it) todo.push_back(*it);
        } else {
          flat[id].push_back(n);
        }
      }
      MOE_CHECK(!flat[id].empty(), "an anyOf / $ref cycle in the schema names no value");
    }
    for (size_t id = 0; id < g_.nodes.size(); ++id)
      if (!flat[id].empty()) g_.nodes[id].alts = std::move(flat[id]);
  }

  int32_t any_value() {
    if (any_ >= 0) return any_;
    any_ = g_.add(make_node(Kind::any_of));
    Node obj = make_node(Kind::object);
    obj.additional = any_;
    Node arr = make_node(Kind::array);
    arr.items = any_;
    Node lit = make_node(Kind::literals);
    lit.trie.insert("true", 0);
    lit.trie.insert("false", 1);
    lit.trie.insert("null", 2);
    std::vector<int32_t> alts = {g_.add(std::move(obj)), g_.add(std::move(arr)), g_.add(make_node(Kind::string)),
                                 g_.add(make_node(Kind::number)), g_.add(std::move(lit))};
    g_.nodes[size_t(any_)].alts = std::move(alts);
    return any_;
  }

  int32_t compile(const json& s, const std::string& path) {
    if (s.is_boolean()) {
      MOE_CHECK(s.get<bool>(), "the schema at {} is false: no value matches it", where(path));
      return any_value();
    }
    MOE_CHECK(s.is_object(), "the schema at {} must be an object or a boolean, not {}", where(path), s.type_name());
    for (const auto& [key, value] : s.items()) {
      if (kIgnored.count(key)) continue;
      MOE_CHECK(kSupported.count(key), "unsupported JSON Schema keyword '{}' at {}", key, where(path));
    }
    if (s.contains("$ref")) {
      for (const auto& [key, value] : s.items())
        MOE_CHECK(key == "$ref" || kIgnored.count(key), "keyword '{}' beside '$ref' at {} is not supported", key,
                  where(path));
      return ref(s["$ref"], path + "/$ref");
    }
    if (s.contains("allOf")) {
      const json& all = s["allOf"];
      MOE_CHECK(all.is_array() && all.size() == 1, "'allOf' at {} is supported only with exactly one schema",
                where(path));
      only_with(s, "allOf", path);
      return compile(all[0], path + "/allOf/0");
    }
    if (s.contains("anyOf")) {
      const json& any = s["anyOf"];
      MOE_CHECK(any.is_array() && !any.empty(), "'anyOf' at {} must be a non-empty array of schemas", where(path));
      only_with(s, "anyOf", path);
      Node n = make_node(Kind::any_of);
      for (size_t i = 0; i < any.size(); ++i) n.alts.push_back(compile(any[i], path + "/anyOf/" + std::to_string(i)));
      return g_.add(std::move(n));
    }
    const std::vector<std::string> types = type_list(s, path);
    if (s.contains("enum") || s.contains("const")) return literals(s, types, path);
    std::vector<std::string> effective = types;
    if (effective.empty()) {  // no type: inferred from the keywords, or any value
      if (s.contains("properties") || s.contains("required") || s.contains("additionalProperties"))
        effective = {"object"};
      else if (s.contains("items") || s.contains("minItems") || s.contains("maxItems"))
        effective = {"array"};
      else if (s.contains("minLength") || s.contains("maxLength"))
        effective = {"string"};
      else if (s.contains("minimum") || s.contains("maximum") || s.contains("exclusiveMinimum") ||
               s.contains("exclusiveMaximum"))
        effective = {"number"};
      else
        return any_value();
    }
    if (effective.size() == 1) return typed(s, effective[0], path);
    Node n = make_node(Kind::any_of);
    for (const auto& t : effective) n.alts.push_back(typed(s, t, path));
    return g_.add(std::move(n));
  }

 private:
  void only_with(const json& s, const std::string& keyword, const std::string& path) {
    for (const auto& [key, value] : s.items())
      MOE_CHECK(key == keyword || kIgnored.count(key), "keyword '{}' beside '{}' at {} is not supported", key,
                keyword, where(path));
  }

  std::vector<std::string> type_list(const json& s, const std::string& path) {
    std::vector<std::string> out;
    if (!s.contains("type")) return out;
    const json& t = s["type"];
    auto add = [&](const json& v) {
      MOE_CHECK(v.is_string() && kTypes.count(v.get<std::string>()),
                "'type' at {} must name object, array, string, integer, number, boolean or null, not {}",
                where(path), v.dump());
      if (std::find(out.begin(), out.end(), v.get<std::string>()) == out.end()) out.push_back(v.get<std::string>());
    };
    if (t.is_array()) {
      MOE_CHECK(!t.empty(), "'type' at {} is an empty array", where(path));
      for (const auto& v : t) add(v);
    } else {
      add(t);
    }
    return out;
  }

  static bool has_type(const json& v, const std::string& t) {
    if (t == "object") return v.is_object();
    if (t == "array") return v.is_array();
    if (t == "string") return v.is_string();
    if (t == "integer") return v.is_number_integer() || (v.is_number_float() && std::trunc(v.get<double>()) == v.get<double>());
    if (t == "number") return v.is_number();
    if (t == "boolean") return v.is_boolean();
    return v.is_null();
  }

  int32_t literals(const json& s, const std::vector<std::string>& types, const std::string& path) {
    for (const auto& [key, value] : s.items())
      MOE_CHECK(key == "enum" || key == "const" || key == "type" || kIgnored.count(key),
                "keyword '{}' beside 'enum'/'const' at {} is not supported", key, where(path));
    std::vector<json> values;
    if (s.contains("const")) values.push_back(s["const"]);
    if (s.contains("enum")) {
      const json& e = s["enum"];
      MOE_CHECK(e.is_array() && !e.empty(), "'enum' at {} must be a non-empty array", where(path));
      for (const auto& v : e) {
        if (s.contains("const") && v != s["const"]) continue;  // both: the values in both
        values.push_back(v);
      }
      if (s.contains("const")) values.erase(values.begin());
      if (s.contains("const") && values.empty()) fail("'enum' and 'const' at {} have no value in common", where(path));
    }
    Node n = make_node(Kind::literals);
    int32_t count = 0;
    for (const auto& v : values) {
      if (!types.empty() &&
          std::none_of(types.begin(), types.end(), [&](const std::string& t) { return has_type(v, t); }))
        continue;
      n.trie.insert(v.dump(), count++);
    }
    MOE_CHECK(count > 0, "no value of 'enum'/'const' at {} has the schema's 'type'", where(path));
    return g_.add(std::move(n));
  }

  uint32_t count_keyword(const json& s, const char* key, const std::string& path) {
    const json& v = s[key];
    MOE_CHECK(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0),
              "'{}' at {} must be a non-negative integer", key, where(path));
    return uint32_t(std::min<uint64_t>(v.get<uint64_t>(), 0xffffffffu));
  }

  int32_t typed(const json& s, const std::string& type, const std::string& path) {
    if (type == "boolean" || type == "null") {
      Node n = make_node(Kind::literals);
      if (type == "null") {
        n.trie.insert("null", 0);
      } else {
        n.trie.insert("true", 0);
        n.trie.insert("false", 1);
      }
      return g_.add(std::move(n));
    }
    if (type == "string") {
      Node n = make_node(Kind::string);
      if (s.contains("minLength")) n.min_len = count_keyword(s, "minLength", path);
      if (s.contains("maxLength")) n.max_len = count_keyword(s, "maxLength", path);
      MOE_CHECK(n.min_len <= n.max_len, "'minLength' {} is above 'maxLength' {} at {}", n.min_len, n.max_len,
                where(path));
      return g_.add(std::move(n));
    }
    if (type == "number") return number(s, path);
    if (type == "integer") return integer(s, path);
    if (type == "array") return array(s, path);
    return object(s, path);
  }

  int32_t integer(const json& s, const std::string& path) {
    Node n = make_node(Kind::integer);
    n.min = -kIntLimit;
    n.max = kIntLimit;
    // Exact: a bound is read as the decimal it is (number_bounds.h), then rounded to the integers.
    Wide lo = -kIntLimit, hi = kIntLimit;
    bounds(s, path, 0, lo, hi);
    n.min = int64_t(std::max<Wide>(lo, -kIntLimit));
    n.max = int64_t(std::min<Wide>(hi, kIntLimit));
    MOE_CHECK(n.min <= n.max, "no integer lies within the bounds at {}", where(path));
    return g_.add(std::move(n));
  }

  // A number's bounds, exact (number_bounds.h): with any of them the number is written without exponent, with at
  // most 15 significant digits and 15 decimals; bounds no such number meets are refused.
  int32_t number(const json& s, const std::string& path) {
    Node n = make_node(Kind::number);
    if (!s.contains("minimum") && !s.contains("maximum") && !s.contains("exclusiveMinimum") &&
        !s.contains("exclusiveMaximum"))
      return g_.add(std::move(n));
    n.bounded = true;
    n.num_lo = -kNumberLimit;
    n.num_hi = kNumberLimit;
    bounds(s, path, kBoundedScale, n.num_lo, n.num_hi);
    if (!number_feasible(DecimalPrefix{}, n.num_lo, n.num_hi)) {
      std::string given;  // the bound keywords as written, e.g. 'minimum' 1e+20
      for (const char* k : {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"})
        if (s.contains(k)) given += (given.empty() ? "'" : ", '") + std::string(k) + "' " + s[k].dump();
      fail("no number with at most {} significant digits and {} decimals lies within the bounds {} at {}",
           kBoundedDigits, kBoundedDecimals, given, where(path));
    }
    return g_.add(std::move(n));
  }

  // Narrows [lo, hi] (units of 10^-scale) by the bound keywords of s.
  void bounds(const json& s, const std::string& path, int scale, Wide& lo, Wide& hi) {
    auto bound = [&](const char* key, bool round_up) {
      MOE_CHECK(s[key].is_number(), "'{}' at {} must be a number", key, where(path));
      return scaled_bound(s[key], scale, round_up);
    };
    if (s.contains("minimum")) lo = std::max(lo, bound("minimum", true));
    if (s.contains("exclusiveMinimum")) lo = std::max(lo, bound("exclusiveMinimum", false) + 1);
    if (s.contains("maximum")) hi = std::min(hi, bound("maximum", false));
    if (s.contains("exclusiveMaximum")) hi = std::min(hi, bound("exclusiveMaximum", true) - 1);
  }

  int32_t array(const json& s, const std::string& path) {
    Node n = make_node(Kind::array);
    if (s.contains("minItems")) n.min_items = count_keyword(s, "minItems", path);
    if (s.contains("maxItems")) n.max_items = count_keyword(s, "maxItems", path);
    MOE_CHECK(n.min_items <= n.max_items, "'minItems' {} is above 'maxItems' {} at {}", n.min_items, n.max_items,
              where(path));
    if (s.contains("items")) {
      MOE_CHECK(s["items"].is_object() || s["items"].is_boolean(),
                "'items' at {} must be a schema (a list of schemas, tuple validation, is not supported)", where(path));
      if (s["items"].is_boolean() && !s["items"].get<bool>()) {
        n.max_items = 0;
        MOE_CHECK(n.min_items == 0, "'items' false at {} with 'minItems' above 0 allows no array", where(path));
      } else {
        n.items = compile(s["items"], path + "/items");
      }
    } else {
      n.items = any_value();
    }
    const int32_t id = g_.add(std::move(n));
    return id;
  }

  int32_t object(const json& s, const std::string& path) {
    Node n = make_node(Kind::object);
    std::vector<std::string> names;
    if (s.contains("properties")) {
      const json& props = s["properties"];
      MOE_CHECK(props.is_object(), "'properties' at {} must be an object", where(path));
      MOE_CHECK(props.size() <= size_t(kMaxProperties), "'properties' at {} has {} properties; at most {} are supported",
                where(path), props.size(), kMaxProperties);
      for (const auto& [name, sub] : props.items()) {
        const int32_t i = int32_t(names.size());
        names.push_back(name);
        n.prop_nodes.push_back(compile(sub, path + "/properties/" + pointer_token(name)));
        n.trie.insert(json(name).dump().substr(1), i);  // after the opening quote, through the closing one
      }
    }
    if (s.contains("required")) {
      const json& req = s["required"];
      MOE_CHECK(req.is_array(), "'required' at {} must be an array of property names", where(path));
      for (const auto& r : req) {
        MOE_CHECK(r.is_string(), "'required' at {} must be an array of property names", where(path));
        auto it = std::find(names.begin(), names.end(), r.get<std::string>());
        MOE_CHECK(it != names.end(), "'required' at {} names '{}', which is not in 'properties'", where(path),
                  r.get<std::string>());
        n.required |= uint64_t(1) << (it - names.begin());
      }
    }
    if (names.empty()) {
      bool free_keys = !options_.strict;
      int32_t values = -1;
      if (s.contains("additionalProperties")) {
        const json& a = s["additionalProperties"];
        MOE_CHECK(a.is_boolean() || a.is_object(), "'additionalProperties' at {} must be a boolean or a schema",
                  where(path));
        free_keys = !a.is_boolean() || a.get<bool>();
        if (a.is_object()) values = compile(a, path + "/additionalProperties");
      }
      if (free_keys) n.additional = values >= 0 ? values : any_value();
    } else if (s.contains("additionalProperties")) {
      const json& a = s["additionalProperties"];
      MOE_CHECK(a.is_boolean() || a.is_object(), "'additionalProperties' at {} must be a boolean or a schema",
                where(path));
      // true or a schema: only the declared properties are generated (valid, narrower).
    }
    return g_.add(std::move(n));
  }

  int32_t ref(const json& r, const std::string& path) {
    MOE_CHECK(r.is_string(), "'$ref' at {} must be a string", where(path));
    const std::string target = r.get<std::string>();
    if (auto it = refs_.find(target); it != refs_.end()) return it->second;
    MOE_CHECK(!target.empty() && target[0] == '#',
              "'$ref' '{}' at {} is not supported: only references within the schema ('#/$defs/...')", target,
              where(path));
    const json* resolved = nullptr;
    try {
      resolved = &root_.at(json::json_pointer(target.substr(1)));
    } catch (const json::exception&) {
      fail("'$ref' '{}' at {} does not resolve within the schema", target, where(path));
    }
    const int32_t id = g_.add(make_node(Kind::ref));
    refs_[target] = id;
    const int32_t body = compile(*resolved, target.substr(1));
    // A chain of references that comes back to itself names no value.
    int32_t t = body;
    for (size_t hops = 0; hops <= g_.nodes.size() && g_.nodes[size_t(t)].kind == Kind::ref; ++hops) {
      MOE_CHECK(t != id, "'$ref' '{}' at {} refers to itself without a value in between", target, where(path));
      t = g_.nodes[size_t(t)].target;
      if (t < 0) break;
    }
    g_.nodes[size_t(id)].target = body;
    return id;
  }

  const json& root_;
  SchemaOptions options_;
  Grammar g_;
  int32_t any_ = -1;
  std::map<std::string, int32_t> refs_;
};

}  // namespace

Schema Schema::compile(const json& schema, const SchemaOptions& options) {
  Compiler c(schema, options);
  return Schema(std::make_shared<const Grammar>(c.run()));
}

Schema Schema::any_object() {
  return compile(json{{"type", "object"}}, SchemaOptions{.strict = false});
}

Schema Schema::any_value() { return compile(json::object(), SchemaOptions{.strict = false}); }

}  // namespace moe::grammar
