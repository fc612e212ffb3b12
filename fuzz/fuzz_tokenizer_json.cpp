// libFuzzer target: tokenizer.json from arbitrary bytes, loaded and, when it loads, used to encode and decode a
// fixed text (ASCII, digits, accents, a newline, an added token). A file that cannot be used must fail with a
// moe::Error that says why: any other exception, a crash, a hang or unbounded memory is a bug.
#include <cstdint>
#include <string>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const moe::Tokenizer tokenizer = moe::Tokenizer::from_json(std::string(reinterpret_cast<const char*>(data), size));
    const std::vector<int32_t> ids = tokenizer.encode("Hello, world! 1234 héllo\n<s> ab  c");
    (void)tokenizer.decode(ids);
  } catch (const moe::Error&) {
  }
  return 0;
}
