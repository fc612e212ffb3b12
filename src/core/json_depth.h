#pragma once
// Bounded JSON nesting. nlohmann's parser and destructor work iteratively, but copying a json, dump(),
// comparing and every conversion into other values (Jinja values, ...) recurse once per level: about 15,000
// levels of [[[...]]] (30 KB of text) overflow a thread's stack. JSON from outside (request bodies, CLI
// input) is therefore checked on its raw text before it is parsed, so a deeper document is never built, and
// converters stop at the same depth.
#include <cstddef>
#include <string_view>
#include <utility>
#include <vector>

namespace moe {

// Deepest nesting of arrays and objects accepted anywhere (the top-level value is level 1). Real inputs
// (messages, tool JSON schemas) nest a few tens of levels.
constexpr size_t kMaxJsonDepth = 128;

// The nesting depth of JSON text: brackets outside strings, counted in one pass without recursion. Stops at
// the first level past `limit` and returns limit + 1. On malformed text it counts the brackets of the prefix
// a parser would accept, so a parser can never build anything deeper than this returns.
inline size_t json_nesting_depth(std::string_view text, size_t limit = kMaxJsonDepth) {
  size_t depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;  // the escaped character cannot end the string
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > deepest) deepest = depth;
      if (deepest > limit) return deepest;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

// The nesting depth of a built JSON value (nlohmann::json or ordered_json), without recursion: for values
// built in code rather than parsed, checked before they are copied or converted. Stops past `limit` (returns
// limit + 1).
template <typename Json>
size_t json_value_depth(const Json& j, size_t limit = kMaxJsonDepth) {
  size_t deepest = 0;
  std::vector<std::pair<const Json*, size_t>> stack{{&j, 1}};
  while (!stack.empty()) {
    const auto [v, depth] = stack.back();
    stack.pop_back();
    if (!v->is_structured()) continue;
    if (depth > deepest) deepest = depth;
    if (deepest > limit) return deepest;
    for (const auto& item : *v) stack.push_back({&item, depth + 1});
  }
  return deepest;
}

}  // namespace moe
