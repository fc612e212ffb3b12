// libFuzzer target: a `moe chat` conversation file (/load) from arbitrary bytes. A file that is not a JSON
// array of {"role", "content"} messages must fail with a moe::Error naming the file: any other exception, a
// crash, a hang or unbounded memory is a bug. A file that loads round-trips through its JSON text.
#include <cstdint>
#include <string>

#include "cli/conversation.h"
#include "core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const nlohmann::json j = moe::cli::parse_conversation(std::string_view(reinterpret_cast<const char*>(data), size), "f.json");
    if (moe::cli::parse_conversation(j.dump(), "again.json") != j) __builtin_trap();
  } catch (const moe::Error&) {
  }
  return 0;
}
