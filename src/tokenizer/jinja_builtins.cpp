// Jinja builtins: operators, attribute and item access, and the filters, tests and str/dict methods that chat
// templates use, with Python's / Jinja2's semantics.
#include "tokenizer/jinja_builtins.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace moe::jinja {
namespace {

bool is_py_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string strip(const std::string& s, const Value* chars, bool left, bool right) {
  const auto drop = [&](char c) {
    if (chars && !chars->is_none() && !chars->is_undefined()) return chars->string.find(c) != std::string::npos;
    return is_py_space(c);
  };
  size_t begin = 0, end = s.size();
  if (left)
    while (begin < end && drop(s[begin])) ++begin;
  if (right)
    while (end > begin && drop(s[end - 1])) --end;
  return s.substr(begin, end - begin);
}

Value split(const std::string& s, const Value* separator, int64_t max_split) {
  List parts;
  if (!separator || separator->is_none()) {  // runs of whitespace, no empty parts
    size_t pos = 0;
    while (pos < s.size()) {
      while (pos < s.size() && is_py_space(s[pos])) ++pos;
      if (pos >= s.size()) break;
      if (max_split >= 0 && static_cast<int64_t>(parts.size()) == max_split) {
        parts.push_back(Value::from(strip(s.substr(pos), nullptr, false, true)));
        break;
      }
      size_t end = pos;
      while (end < s.size() && !is_py_space(s[end])) ++end;
      parts.push_back(Value::from(s.substr(pos, end - pos)));
      pos = end;
    }
    return Value::from(std::move(parts));
  }
  const std::string sep = require_string(*separator, "split");
  if (sep.empty()) fail("chat template: split with an empty separator");
  size_t pos = 0;
  for (;;) {
    const size_t found = s.find(sep, pos);
    if (found == std::string::npos || (max_split >= 0 && static_cast<int64_t>(parts.size()) == max_split)) {
      parts.push_back(Value::from(s.substr(pos)));
      break;
    }
    parts.push_back(Value::from(s.substr(pos, found - pos)));
    pos = found + sep.size();
  }
  return Value::from(std::move(parts));
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count = -1) {
  if (from.empty()) return s;
  std::string out;
  size_t pos = 0, found;
  for (int64_t n = 0; (count < 0 || n < count) && (found = s.find(from, pos)) != std::string::npos; ++n) {
    check_text_size(double(out.size()) + double(found - pos) + double(to.size()), "replace()");
    out.append(s, pos, found - pos).append(to);
    pos = found + from.size();
  }
  check_text_size(double(out.size()) + double(s.size() - pos), "replace()");
  return out.append(s, pos);
}

// Python integer arithmetic within int64: an overflow is an error (Python would go on with big integers).
int64_t int_op(char op, int64_t a, int64_t b) {
  int64_t r = 0;
  const bool overflow = op == '+'   ? __builtin_add_overflow(a, b, &r)
                        : op == '-' ? __builtin_sub_overflow(a, b, &r)
                                    : __builtin_mul_overflow(a, b, &r);
  if (overflow) fail("chat template: integer overflow in {} {} {}", a, op, b);
  return r;
}

std::string upper_or_lower(std::string s, bool upper) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x80) c = static_cast<char>(upper ? std::toupper(c) : std::tolower(c));
  return s;
}

std::string capitalize(const std::string& s) {
  std::string out = upper_or_lower(s, false);
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(out[0]));
  return out;
}

std::string title(const std::string& s) {
  std::string out = s;
  bool start = true;
  for (char& c : out) {
    const bool alpha = std::isalpha(static_cast<unsigned char>(c));
    if (alpha) c = static_cast<char>(start ? std::toupper(c) : std::tolower(c));
    start = !alpha;
  }
  return out;
}

int64_t length_of(const Value& v) {
  switch (v.kind) {
    case Value::Kind::String: {
      int64_t n = 0;
      for (size_t pos = 0; pos < v.string.size(); ++n) pos += utf8::decode_at(v.string, pos).length;
      return n;
    }
    case Value::Kind::List: return static_cast<int64_t>(v.list->size());
    case Value::Kind::Dict: return static_cast<int64_t>(v.dict->size());
    case Value::Kind::Undefined: return 0;
    default: fail("chat template: object of type '{}' has no length", v.type_name());
  }
}

const Value* kwarg(const Kwargs& kwargs, std::string_view name) {
  for (const auto& [k, v] : kwargs)
    if (k == name) return &v;
  return nullptr;
}

// Positional argument i, else keyword `name`, else nullptr.
const Value* argument(const Args& args, const Kwargs& kwargs, size_t i, std::string_view name) {
  if (i < args.size()) return &args[i];
  return kwarg(kwargs, name);
}

}  // namespace

[[noreturn]] void undefined_error(const Value& v) { fail("chat template: '{}' is undefined", v.string); }

const Value& require_defined(const Value& v) {
  if (v.is_undefined()) undefined_error(v);
  return v;
}

std::string require_string(const Value& v, const char* what) {
  require_defined(v);
  if (!v.is_string()) fail("chat template: {} expects a string, got {}", what, v.type_name());
  return v.string;
}

int64_t require_int(const Value& v, const char* what) {
  require_defined(v);
  if (v.kind == Value::Kind::Int) return v.integer;
  if (v.kind == Value::Kind::Bool) return v.boolean;
  fail("chat template: {} expects an integer, got {}", what, v.type_name());
}

Value attribute_of(const Value& object, const std::string& name) {
  if (object.is_undefined()) undefined_error(object);
  if (object.is_mapping())
    if (const Value* member = object.find(name)) return *member;
  if (object.kind == Value::Kind::List && !name.empty() && std::isdigit(static_cast<unsigned char>(name[0]))) {
    const auto i = std::stoul(name);
    if (i < object.list->size()) return (*object.list)[i];
  }
  return Value::undefined(name);
}

Value subscript(const Value& object, const Value& key) {
  if (object.is_undefined()) undefined_error(object);
  if (object.is_mapping()) {
    if (key.is_string())
      if (const Value* member = object.find(key.string)) return *member;
    return Value::undefined(key.str());
  }
  if (object.kind == Value::Kind::List || object.kind == Value::Kind::String) {
    if (key.kind != Value::Kind::Int) return Value::undefined(key.str());
    if (object.kind == Value::Kind::List) {
      const auto n = static_cast<int64_t>(object.list->size());
      const int64_t i = key.integer < 0 ? key.integer + n : key.integer;
      if (i < 0 || i >= n) return Value::undefined(fmt::format("index {}", key.integer));
      return (*object.list)[i];
    }
    const std::vector<uint32_t> starts = char_starts(object.string);
    const auto n = static_cast<int64_t>(starts.size()) - 1;
    const int64_t i = key.integer < 0 ? key.integer + n : key.integer;
    if (i < 0 || i >= n) return Value::undefined(fmt::format("index {}", key.integer));
    return Value::from(object.string.substr(starts[size_t(i)], starts[size_t(i) + 1] - starts[size_t(i)]));
  }
  return Value::undefined(key.str());
}

Value slice(const Value& object, const Value* start, const Value* stop, const Value* step) {
  require_defined(object);
  const bool is_string = object.is_string();
  if (!is_string && object.kind != Value::Kind::List) fail("chat template: cannot slice a {}", object.type_name());
  // A string is sliced by characters, through their byte offsets (no Value per character).
  const std::vector<uint32_t> starts = is_string ? char_starts(object.string) : std::vector<uint32_t>();
  const auto n = static_cast<int64_t>(is_string ? starts.size() - 1 : object.list->size());
  const int64_t stride = step && !step->is_none() ? require_int(*step, "slice") : 1;
  if (stride == 0) fail("chat template: slice step cannot be zero");
  const auto bound = [&](const Value* v, int64_t fallback) {
    if (!v || v->is_none()) return fallback;
    int64_t i = require_int(*v, "slice");
    if (i < 0) i += n;
    return stride > 0 ? std::clamp<int64_t>(i, 0, n) : std::clamp<int64_t>(i, -1, n - 1);
  };
  const int64_t begin = bound(start, stride > 0 ? 0 : n - 1), end = bound(stop, stride > 0 ? n : -1);
  List out;
  std::string text;
  // i stays within [-1, n]; a step past the end stops the walk (no overflow with a huge step).
  for (int64_t i = begin; stride > 0 ? i < end : i > end;) {
    if (is_string) text.append(object.string, starts[size_t(i)], starts[size_t(i) + 1] - starts[size_t(i)]);
    else out.push_back((*object.list)[size_t(i)]);
    if (stride > 0 ? end - i <= stride : __int128(i - end) <= -__int128(stride)) break;
    i += stride;
  }
  return is_string ? Value::from(std::move(text)) : Value::from(std::move(out));
}

bool less_than(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) return a.as_double() < b.as_double();
  if (a.is_string() && b.is_string()) return a.string < b.string;
  fail("chat template: cannot compare {} with {}", a.type_name(), b.type_name());
}

bool contains(const Value& container, const Value& item) {
  require_defined(container);
  if (container.is_string()) return container.string.find(require_string(item, "'in'")) != std::string::npos;
  if (container.is_mapping()) return item.is_string() && container.find(item.string);
  if (container.kind == Value::Kind::List) {
    for (const Value& v : *container.list)
      if (equals(v, item)) return true;
    return false;
  }
  fail("chat template: argument of type '{}' is not iterable", container.type_name());
}

Value arithmetic(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") {
    std::string left = a.str(), right = b.str();
    check_text_size(double(left.size()) + double(right.size()), "'~'");
    return Value::from(std::move(left) + right);
  }
  require_defined(a);
  require_defined(b);
  const bool ints = a.kind == Value::Kind::Int && b.kind == Value::Kind::Int;
  if (op == "+") {
    if (a.is_string() && b.is_string()) {
      check_text_size(double(a.string.size()) + double(b.string.size()), "'+'");
      return Value::from(a.string + b.string);
    }
    if (a.kind == Value::Kind::List && b.kind == Value::Kind::List) {
      if (a.list->size() + b.list->size() > kMaxListItems)
        fail("chat template: a list of more than {} items", kMaxListItems);
      List l = *a.list;
      l.insert(l.end(), b.list->begin(), b.list->end());
      return Value::from(std::move(l));
    }
    if (ints) return Value::from(int_op('+', a.integer, b.integer));
    if (a.is_number() && b.is_number()) return Value::from(a.as_double() + b.as_double());
  } else if (op == "-") {
    if (ints) return Value::from(int_op('-', a.integer, b.integer));
    if (a.is_number() && b.is_number()) return Value::from(a.as_double() - b.as_double());
  } else if (op == "*") {
    if (ints) return Value::from(int_op('*', a.integer, b.integer));
    if (a.is_number() && b.is_number()) return Value::from(a.as_double() * b.as_double());
    const Value& text = a.is_string() ? a : b;
    const Value& count = a.is_string() ? b : a;
    if (text.is_string() && count.kind == Value::Kind::Int) {
      std::string out;
      if (count.integer <= 0 || text.string.empty()) return Value::from(std::move(out));
      check_text_size(double(text.string.size()) * double(count.integer), "'*'");
      for (int64_t i = 0; i < count.integer; ++i) out += text.string;
      return Value::from(std::move(out));
    }
  } else if (op == "/") {
    if (a.is_number() && b.is_number()) {
      if (b.as_double() == 0) fail("chat template: division by zero");
      return Value::from(a.as_double() / b.as_double());
    }
  } else if (op == "//" || op == "%") {
    if (ints) {
      if (b.integer == 0) fail("chat template: division by zero");
      if (a.integer == INT64_MIN && b.integer == -1) {
        if (op == "%") return Value::from(int64_t{0});
        fail("chat template: integer overflow in '{}'", op);
      }
      int64_t q = a.integer / b.integer, rem = a.integer % b.integer;
      if (rem != 0 && ((rem < 0) != (b.integer < 0))) --q, rem += b.integer;  // Python floors
      return Value::from(op == "//" ? q : rem);
    }
    if (a.is_number() && b.is_number()) {
      if (b.as_double() == 0) fail("chat template: division by zero");
      const double q = std::floor(a.as_double() / b.as_double());
      return Value::from(op == "//" ? q : a.as_double() - q * b.as_double());
    }
  } else if (op == "**") {
    if (ints && b.integer >= 0) {  // by squaring: log2(exponent) steps
      int64_t base = a.integer, e = b.integer, r = 1;
      while (e > 0) {
        if (e & 1) r = int_op('*', r, base);
        e >>= 1;
        if (e > 0) base = int_op('*', base, base);
      }
      return Value::from(r);
    }
    if (a.is_number() && b.is_number()) return Value::from(std::pow(a.as_double(), b.as_double()));
  }
  fail("chat template: unsupported operand types for {}: '{}' and '{}'", op, a.type_name(), b.type_name());
}

Value call_method(const Value& object, const std::string& name, const Args& args, const Kwargs& kwargs) {
  require_defined(object);
  if (object.is_string()) {
    const std::string& s = object.string;
    const Value* a0 = argument(args, kwargs, 0, name == "split" ? "sep" : "chars");
    if (name == "strip") return Value::from(strip(s, a0, true, true));
    if (name == "lstrip") return Value::from(strip(s, a0, true, false));
    if (name == "rstrip") return Value::from(strip(s, a0, false, true));
    if (name == "split") {
      const Value* max = argument(args, kwargs, 1, "maxsplit");
      return split(s, a0, max ? require_int(*max, "split") : -1);
    }
    if (name == "upper") return Value::from(upper_or_lower(s, true));
    if (name == "lower") return Value::from(upper_or_lower(s, false));
    if (name == "title") return Value::from(title(s));
    if (name == "capitalize") return Value::from(capitalize(s));
    if (name == "startswith" || name == "endswith") {
      const Value& arg = require_defined(args.at(0));
      List candidates = arg.kind == Value::Kind::List ? *arg.list : List{arg};
      for (const Value& c : candidates) {
        const std::string p = require_string(c, name.c_str());
        if (name == "startswith" ? s.compare(0, p.size(), p) == 0
                                 : s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0)
          return Value::from(true);
      }
      return Value::from(false);
    }
    if (name == "replace") {
      const int64_t count = args.size() > 2 ? require_int(args[2], "replace") : -1;
      return Value::from(replace_all(s, require_string(args.at(0), "replace"), require_string(args.at(1), "replace"), count));
    }
    if (name == "find") {
      const size_t pos = s.find(require_string(args.at(0), "find"));
      return Value::from(pos == std::string::npos ? int64_t{-1} : static_cast<int64_t>(pos));
    }
    if (name == "count") {
      const std::string needle = require_string(args.at(0), "count");
      int64_t n = 0;
      for (size_t pos = 0; !needle.empty() && (pos = s.find(needle, pos)) != std::string::npos; pos += needle.size()) ++n;
      return Value::from(n);
    }
    if (name == "join") {
      std::string out;
      const List items = iterate(args.at(0));
      for (size_t i = 0; i < items.size(); ++i) {
        const std::string item = items[i].str();
        check_text_size(double(out.size()) + double(s.size()) + double(item.size()), "join()");
        out += (i ? s : "") + item;
      }
      return Value::from(std::move(out));
    }
  }
  if (object.is_mapping()) {
    if (name == "get") {
      const Value* found = object.find(require_string(args.at(0), "get"));
      if (found) return *found;
      return args.size() > 1 ? args[1] : Value::none();
    }
    if (name == "items" || name == "keys" || name == "values") {
      List out;
      for (const auto& [k, v] : *object.dict) {
        if (name == "items") out.push_back(Value::make_tuple(List{Value::from(k), v}));
        else out.push_back(name == "keys" ? Value::from(k) : v);
      }
      return Value::from(std::move(out));
    }
  }
  fail("chat template: '{}' object has no method '{}'", object.type_name(), name);
}

bool call_test(const std::string& name, const Args& args) {
  const Value& v = args.at(0);
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.kind == Value::Kind::Int;
  if (name == "float") return v.kind == Value::Kind::Float;
  if (name == "boolean") return v.kind == Value::Kind::Bool;
  if (name == "true") return v.kind == Value::Kind::Bool && v.boolean;
  if (name == "false") return v.kind == Value::Kind::Bool && !v.boolean;
  if (name == "mapping") return v.kind == Value::Kind::Dict;
  if (name == "iterable") return v.kind == Value::Kind::List || v.kind == Value::Kind::Dict || v.is_string();
  if (name == "sequence") return v.kind == Value::Kind::List || v.kind == Value::Kind::Dict || v.is_string();
  if (name == "callable") return false;
  if (name == "odd" || name == "even") return (require_int(v, name.c_str()) % 2 != 0) == (name == "odd");
  if (name == "divisibleby") return require_int(v, "divisibleby") % require_int(args.at(1), "divisibleby") == 0;
  if (name == "eq" || name == "equalto" || name == "sameas") return equals(v, args.at(1));
  if (name == "ne") return !equals(v, args.at(1));
  if (name == "lt") return less_than(v, args.at(1));
  if (name == "gt") return less_than(args.at(1), v);
  if (name == "le") return !less_than(args.at(1), v);
  if (name == "ge") return !less_than(v, args.at(1));
  if (name == "in") return contains(args.at(1), v);
  fail("chat template: unknown test '{}'", name);
}

Value call_filter(const std::string& name, const Args& args, const Kwargs& kwargs) {
  const Value& v = args.at(0);
  const Value* a1 = args.size() > 1 ? &args[1] : nullptr;
  if (name == "default" || name == "d") {
    const Value* boolean = argument(args, kwargs, 2, "boolean");
    const bool use_default = v.is_undefined() || (boolean && boolean->truthy() && !v.truthy());
    return use_default ? (a1 ? *a1 : Value::from(std::string())) : v;
  }
  if (name == "safe") return v;
  if (name == "string") return Value::from(v.str());
  if (name == "length" || name == "count") return Value::from(length_of(v));
  if (name == "tojson") {
    const Value* indent = argument(args, kwargs, 1, "indent");
    const int64_t width = indent && !indent->is_none() ? require_int(*indent, "tojson") : -1;
    if (width < -1 || width > 1000) fail("chat template: tojson indent must be between 0 and 1000, got {}", width);
    return Value::from(v.to_json(static_cast<int>(width)));
  }
  require_defined(v);
  if (name == "trim") return Value::from(strip(require_string(v, "trim"), a1, true, true));
  if (name == "upper") return Value::from(upper_or_lower(v.str(), true));
  if (name == "lower") return Value::from(upper_or_lower(v.str(), false));
  if (name == "capitalize") return Value::from(capitalize(v.str()));
  if (name == "title") return Value::from(title(v.str()));
  if (name == "replace")
    return Value::from(replace_all(v.str(), require_string(args.at(1), "replace"), require_string(args.at(2), "replace")));
  if (name == "int") {
    if (v.kind == Value::Kind::Int) return v;
    if (v.kind == Value::Kind::Float) return Value::from(static_cast<int64_t>(v.number));
    if (v.kind == Value::Kind::Bool) return Value::from(static_cast<int64_t>(v.boolean));
    try {
      return Value::from(static_cast<int64_t>(std::stoll(strip(v.str(), nullptr, true, true))));
    } catch (const std::exception&) {
      return a1 ? *a1 : Value::from(int64_t{0});
    }
  }
  if (name == "float") {
    if (v.is_number()) return Value::from(v.as_double());
    try {
      return Value::from(std::stod(v.str()));
    } catch (const std::exception&) {
      return Value::from(0.0);
    }
  }
  if (name == "abs") {
    if (v.kind == Value::Kind::Int) return Value::from(v.integer < 0 ? -v.integer : v.integer);
    return Value::from(std::fabs(v.as_double()));
  }
  if (name == "list") return Value::from(iterate(v));
  if (name == "first" || name == "last") {
    const List items = iterate(v);
    if (items.empty()) return Value::undefined(name);
    return name == "first" ? items.front() : items.back();
  }
  if (name == "reverse") {
    List items = iterate(v);
    std::reverse(items.begin(), items.end());
    if (v.is_string()) {
      std::string s;
      for (const Value& c : items) s += c.string;
      return Value::from(std::move(s));
    }
    return Value::from(std::move(items));
  }
  if (name == "join") {
    const std::string separator = a1 ? a1->str() : "";
    const Value* attribute = kwarg(kwargs, "attribute");
    std::string out;
    const List items = iterate(v);
    for (size_t i = 0; i < items.size(); ++i) {
      const std::string item = (attribute ? attribute_of(items[i], attribute->str()) : items[i]).str();
      check_text_size(double(out.size()) + double(separator.size()) + double(item.size()), "join");
      out += (i ? separator : "") + item;
    }
    return Value::from(std::move(out));
  }
  if (name == "items") {
    if (!v.is_mapping()) fail("chat template: items filter needs a mapping, got {}", v.type_name());
    return call_method(v, "items", {}, {});
  }
  if (name == "unique") {
    List out;
    int64_t comparisons = 0;
    for (const Value& item : iterate(v)) {
      if ((comparisons += int64_t(out.size())) > kMaxComparisons)
        fail("chat template: unique() needs more than {} comparisons", kMaxComparisons);
      if (std::none_of(out.begin(), out.end(), [&](const Value& seen) { return equals(seen, item); }))
        out.push_back(item);
    }
    return Value::from(std::move(out));
  }
  if (name == "sort") {
    List items = iterate(v);
    const Value* attribute = kwarg(kwargs, "attribute");
    const Value* reverse = argument(args, kwargs, 1, "reverse");
    std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
      return attribute ? less_than(attribute_of(a, attribute->str()), attribute_of(b, attribute->str()))
                       : less_than(a, b);
    });
    if (reverse && reverse->truthy()) std::reverse(items.begin(), items.end());
    return Value::from(std::move(items));
  }
  if (name == "selectattr" || name == "rejectattr") {
    const std::string attribute = require_string(args.at(1), name.c_str());
    List out;
    for (const Value& item : iterate(v)) {
      const Value member = attribute_of(item, attribute);
      bool pass;
      if (args.size() > 2) {
        Args test_args{member};
        test_args.insert(test_args.end(), args.begin() + 3, args.end());
        pass = call_test(require_string(args[2], name.c_str()), test_args);
      } else {
        pass = member.truthy();
      }
      if (pass == (name == "selectattr")) out.push_back(item);
    }
    return Value::from(std::move(out));
  }
  if (name == "map") {
    List out;
    const Value* attribute = kwarg(kwargs, "attribute");
    for (const Value& item : iterate(v)) {
      if (attribute) {
        out.push_back(attribute_of(item, attribute->str()));
      } else {
        const std::string filter = require_string(args.at(1), "map");  // map(name, args...) or map(attribute=..)
        Args filter_args{item};
        filter_args.insert(filter_args.end(), args.begin() + 2, args.end());
        out.push_back(call_filter(filter, filter_args, {}));
      }
    }
    return Value::from(std::move(out));
  }
  if (name == "indent") {
    const int64_t width = a1 ? require_int(*a1, "indent") : 4;
    const Value* first = argument(args, kwargs, 2, "first");
    const std::string s = v.str();
    const double lines = double(std::count(s.begin(), s.end(), '\n') + 1);
    check_text_size(double(s.size()) + lines * double(std::max<int64_t>(width, 0)), "indent");
    const std::string pad(static_cast<size_t>(std::max<int64_t>(width, 0)), ' ');
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
      out += s[i];
      if (s[i] == '\n' && i + 1 < s.size() && s[i + 1] != '\n') out += pad;
    }
    return Value::from(first && first->truthy() ? pad + out : out);
  }
  if (name == "escape" || name == "e") {
    std::string out;
    for (char c : v.str()) {
      switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&#34;"; break;
        case '\'': out += "&#39;"; break;
        default: out += c;
      }
    }
    return Value::from(std::move(out));
  }
  fail("chat template: unknown filter '{}'", name);
}

}  // namespace moe::jinja
