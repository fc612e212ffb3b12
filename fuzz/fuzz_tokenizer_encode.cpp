// libFuzzer target: encode arbitrary bytes with the real DeepSeek-V3 tokenizer (loaded once), then check that
// decoding gives the bytes back exactly, that decode() is valid UTF-8, and that streaming decoding agrees with it.
// Nothing may throw: any input text is encodable.
#include <cstdint>
#include <string>
#include <string_view>

#include "tokenizer/tokenizer.h"

#ifndef MOE_SOURCE_DIR
#define MOE_SOURCE_DIR "."
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const moe::Tokenizer tokenizer = moe::Tokenizer::load(MOE_SOURCE_DIR "/models/deepseek-v3-tokenizer");
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = tokenizer.encode(text);
  if (tokenizer.decode_bytes(ids) != text) __builtin_trap();  // byte-level encoding is lossless

  const std::string decoded = tokenizer.decode(ids);
  moe::StreamingDecoder stream(tokenizer);
  std::string streamed;
  for (int32_t id : ids) streamed += stream.push(id);
  streamed += stream.flush();
  // For valid UTF-8 input both give the text back (streaming replaces ill-formed bytes chunk by chunk, so on
  // invalid input its U+FFFD placement may differ from decode()'s).
  if (decoded == text && streamed != text) __builtin_trap();
  return 0;
}
