#pragma once
// Jinja builtins shared by the evaluator (jinja_eval.cpp): Python-semantics operators and access, and the builtin
// filters, tests and methods. Errors are moe::Error.
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace moe::jinja {

using Args = std::vector<Value>;
using Kwargs = std::vector<std::pair<std::string, Value>>;

[[noreturn]] void undefined_error(const Value& v);
const Value& require_defined(const Value& v);
std::string require_string(const Value& v, const char* what);
int64_t require_int(const Value& v, const char* what);

Value attribute_of(const Value& object, const std::string& name);  // obj.name
Value subscript(const Value& object, const Value& key);             // obj[key]
Value slice(const Value& object, const Value* start, const Value* stop, const Value* step);
bool less_than(const Value& a, const Value& b);
bool contains(const Value& container, const Value& item);  // item in container
Value arithmetic(const std::string& op, const Value& a, const Value& b);  // + - * / // % ** ~

Value call_method(const Value& object, const std::string& name, const Args& args, const Kwargs& kwargs);
bool call_test(const std::string& name, const Args& args);  // args[0] is the tested value
Value call_filter(const std::string& name, const Args& args, const Kwargs& kwargs);  // args[0] is the input

}  // namespace moe::jinja
