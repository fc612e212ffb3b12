// libFuzzer target: generation_config.json parsing on arbitrary bytes. Only moe::Error may escape, and what is
// accepted must be in the documented ranges.
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "io/generation_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const moe::GenerationDefaults g =
        moe::parse_generation_config(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    if (g.temperature && !(*g.temperature >= 0)) __builtin_trap();
    if (g.top_p && !(*g.top_p > 0 && *g.top_p <= 1)) __builtin_trap();
    if (g.min_p && !(*g.min_p >= 0 && *g.min_p <= 1)) __builtin_trap();
    if (g.repetition_penalty && !(*g.repetition_penalty > 0)) __builtin_trap();
    if (g.top_k && *g.top_k < 0) __builtin_trap();
  } catch (const moe::Error&) {
  }
  return 0;
}
