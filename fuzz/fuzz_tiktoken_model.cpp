// libFuzzer target: tiktoken.model (Kimi-K2's tokenizer vocabulary) from arbitrary bytes, loaded and, when it loads,
// used to encode and decode a fixed text (ASCII, digits, CJK, accents, whitespace runs, a special token). A file
// that cannot be used must fail with a moe::Error naming the line: any other exception, a crash, a hang or
// unbounded memory is a bug (a rank is an id, so a huge rank must not allocate its way there).
#include <cstdint>
#include <string>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const moe::Tokenizer tokenizer =
        moe::Tokenizer::from_tiktoken(std::string(reinterpret_cast<const char*>(data), size), "", "fuzz.model");
    const std::string text = "Hello, world! 1234 héllo 数学\n\n  x<|reserved_token_300|>'s";
    const std::vector<int32_t> ids = tokenizer.encode(text);
    if (tokenizer.decode_bytes(ids) != text) __builtin_trap();  // byte-level: every text comes back exactly
  } catch (const moe::Error&) {
  }
  return 0;
}
