#include "tokenizer/jinja_value.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>

#include "core/error.h"
#include "core/json_depth.h"
#include "tokenizer/unicode.h"

namespace moe::jinja {

namespace {
// `depth`: the level of j (the top-level value is 1). Containers past kMaxJsonDepth fail before their items are
// visited, so the recursion is bounded whatever the caller built.
template <typename Json>
Value convert(const Json& j, size_t depth) {
  if (j.is_structured() && depth > kMaxJsonDepth)
    fail("chat template: JSON input nesting deeper than {} levels", kMaxJsonDepth);
  switch (j.type()) {
    case nlohmann::json::value_t::null: return Value::none();
    case nlohmann::json::value_t::boolean: return Value::from(j.template get<bool>());
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned: return Value::from(j.template get<int64_t>());
    case nlohmann::json::value_t::number_float: return Value::from(j.template get<double>());
    case nlohmann::json::value_t::string: return Value::from(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      List l;
      for (const auto& item : j) l.push_back(convert(item, depth + 1));
      return Value::from(std::move(l));
    }
    case nlohmann::json::value_t::object: {
      Dict d;
      for (const auto& [k, v] : j.items()) d.emplace_back(k, convert(v, depth + 1));
      return Value::from(std::move(d));
    }
    default: fail("chat template: unsupported JSON value {}", j.dump());
  }
}
}  // namespace

Value Value::from_json(const nlohmann::json& j) { return convert(j, 1); }
Value Value::from_json(const nlohmann::ordered_json& j) { return convert(j, 1); }

bool Value::truthy() const {
  switch (kind) {
    case Kind::Undefined:
    case Kind::None: return false;
    case Kind::Bool: return boolean;
    case Kind::Int: return integer != 0;
    case Kind::Float: return number != 0;
    case Kind::String: return !string.empty();
    case Kind::List: return !list->empty();
    case Kind::Dict: return !dict->empty();
    case Kind::Namespace: return true;
  }
  return false;
}

const Value* Value::find(const std::string& key) const {
  if (!is_mapping()) return nullptr;
  for (const auto& [k, v] : *dict)
    if (k == key) return &v;
  return nullptr;
}

void Value::set(const std::string& key, Value value) {
  for (auto& [k, v] : *dict)
    if (k == key) {
      v = std::move(value);
      return;
    }
  dict->emplace_back(key, std::move(value));
}

const char* Value::type_name() const {
  switch (kind) {
    case Kind::Undefined: return "undefined";
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    case Kind::Namespace: return "Namespace";
  }
  return "?";
}

namespace {
std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  std::string s = fmt::format("{}", d);  // shortest round-trip digits, like Python
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

std::string string_repr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos, has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == static_cast<unsigned char>(quote)) out += std::string("\\") + quote;
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7F) out += fmt::format("\\x{:02x}", c);
    else out += static_cast<char>(c);
  }
  return out + quote;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || c == 0x7F) out += fmt::format("\\u{:04x}", c);
        else out += static_cast<char>(c);
    }
  }
  return out + "\"";
}
}  // namespace

std::string Value::str() const {
  switch (kind) {
    case Kind::Undefined: return "";
    case Kind::String: return string;
    default: return repr();
  }
}

std::string Value::repr() const {
  switch (kind) {
    case Kind::Undefined: return "";
    case Kind::None: return "None";
    case Kind::Bool: return boolean ? "True" : "False";
    case Kind::Int: return std::to_string(integer);
    case Kind::Float: return float_repr(number);
    case Kind::String: return string_repr(string);
    case Kind::List: {
      std::string out = tuple ? "(" : "[";
      for (size_t i = 0; i < list->size(); ++i) out += (i ? ", " : "") + (*list)[i].repr();
      if (tuple) return out + (list->size() == 1 ? ",)" : ")");
      return out + "]";
    }
    case Kind::Dict: {
      std::string out = "{";
      for (size_t i = 0; i < dict->size(); ++i)
        out += (i ? ", " : "") + string_repr((*dict)[i].first) + ": " + (*dict)[i].second.repr();
      return out + "}";
    }
    case Kind::Namespace: return "<Namespace>";
  }
  return "";
}

std::string Value::to_json(int indent, int depth) const {
  std::string newline, closing;  // built with append: GCC 12 warns falsely (-Wrestrict) about "\n" + string
  if (indent >= 0) {
    newline.append(1, '\n').append(static_cast<size_t>(indent) * (depth + 1), ' ');
    closing.append(1, '\n').append(static_cast<size_t>(indent) * depth, ' ');
  }
  const std::string item_separator = indent >= 0 ? "," : ", ";
  switch (kind) {
    case Kind::Undefined: fail("chat template: tojson of an undefined value");
    case Kind::None: return "null";
    case Kind::Bool: return boolean ? "true" : "false";
    case Kind::Int: return std::to_string(integer);
    case Kind::Float: return std::isnan(number) ? "NaN" : std::isinf(number) ? (number > 0 ? "Infinity" : "-Infinity") : float_repr(number);
    case Kind::String: return json_string(string);
    case Kind::List: {
      if (list->empty()) return "[]";
      std::string out = "[";
      for (size_t i = 0; i < list->size(); ++i) out += (i ? item_separator : "") + newline + (*list)[i].to_json(indent, depth + 1);
      return out + closing + "]";
    }
    case Kind::Dict:
    case Kind::Namespace: {
      if (dict->empty()) return "{}";
      std::string out = "{";
      for (size_t i = 0; i < dict->size(); ++i)
        out += (i ? item_separator : "") + newline + json_string((*dict)[i].first) + ": " +
               (*dict)[i].second.to_json(indent, depth + 1);
      return out + closing + "}";
    }
  }
  return "";
}

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) return a.as_double() == b.as_double();
  if (a.kind == Value::Kind::Bool && b.is_number()) return (a.boolean ? 1.0 : 0.0) == b.as_double();
  if (b.kind == Value::Kind::Bool && a.is_number()) return (b.boolean ? 1.0 : 0.0) == a.as_double();
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None: return true;
    case Value::Kind::Bool: return a.boolean == b.boolean;
    case Value::Kind::String: return a.string == b.string;
    case Value::Kind::List:
      if (a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i)
        if (!equals((*a.list)[i], (*b.list)[i])) return false;
      return true;
    case Value::Kind::Dict:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* other = b.find(k);
        if (!other || !equals(v, *other)) return false;
      }
      return true;
    case Value::Kind::Namespace: return a.dict == b.dict;
    default: return false;
  }
}

void check_text_size(double bytes, const char* what) {
  if (bytes > double(kMaxTextBytes))
    fail("chat template: {} would make a string of {:.0f} bytes, more than the {} MiB a template may build", what,
         bytes, kMaxTextBytes >> 20);
}

std::vector<uint32_t> char_starts(const std::string& s) {
  check_text_size(double(s.size()), "a string");  // offsets fit 32 bits
  std::vector<uint32_t> starts;
  for (size_t pos = 0; pos < s.size(); pos += size_t(utf8::decode_at(s, pos).length)) starts.push_back(uint32_t(pos));
  starts.push_back(uint32_t(s.size()));
  return starts;
}

List iterate(const Value& v) {
  switch (v.kind) {
    case Value::Kind::List: return *v.list;
    case Value::Kind::Dict: {
      List keys;
      for (const auto& [k, _] : *v.dict) keys.push_back(Value::from(k));
      return keys;
    }
    case Value::Kind::String: {
      const std::vector<uint32_t> starts = char_starts(v.string);
      if (starts.size() - 1 > kMaxListItems)
        fail("chat template: iterating over a string of more than {} characters", kMaxListItems);
      List chars;
      for (size_t i = 0; i + 1 < starts.size(); ++i)
        chars.push_back(Value::from(v.string.substr(starts[i], starts[i + 1] - starts[i])));
      return chars;
    }
    case Value::Kind::Undefined: fail("chat template: '{}' is undefined", v.string);
    default: fail("chat template: '{}' object is not iterable", v.type_name());
  }
}

}  // namespace moe::jinja
