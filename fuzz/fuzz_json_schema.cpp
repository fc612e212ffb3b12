// libFuzzer target: the JSON Schema compiler (src/engine/grammar/schema.cpp) and the byte matcher. The input's
// first line is a schema; any schema must compile or throw moe::Error (nothing else may escape, crash or trip the
// sanitizers); a compiled schema is then fed the rest of the input byte by byte, which must never take a byte
// that leaves no way to finish (checked by one step of lookahead: some byte is taken, or the value may end).
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/error.h"
#include "core/json_depth.h"
#include "engine/grammar/matcher.h"

using namespace moe::grammar;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t nl = in.find('\n');
  const std::string_view schema_text = in.substr(0, nl);
  const std::string_view text = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
  if (moe::json_nesting_depth(schema_text) > moe::kMaxJsonDepth) return 0;  // the server refuses these first
  nlohmann::json schema;
  try {
    schema = nlohmann::json::parse(schema_text);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  for (bool strict : {true, false}) {
    std::optional<Schema> compiled;
    try {
      compiled = Schema::compile(schema, SchemaOptions{.strict = strict});
    } catch (const moe::Error&) {
      continue;
    }
    const Matcher m({Piece::value(*compiled)}, 16);
    State s = m.initial(), next;
    for (char c : text.substr(0, 512)) {
      if (!m.step(s, uint8_t(c), next)) break;
      std::swap(s, next);
      bool live = m.can_end(s);
      for (int b = 0; b < 256 && !live; ++b) live = m.step(s, uint8_t(b), next);
      if (!live) std::abort();  // a dead end was entered
    }
  }
  return 0;
}
