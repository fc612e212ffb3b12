// libFuzzer target: the safetensors header parser on arbitrary text. The first 8 bytes (when present) give
// the size of the data section the offsets are checked against. Only moe::Error may escape as a rejection.
#include <cstdint>
#include <cstring>
#include <string_view>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  uint64_t data_size = 0;
  if (size >= 8) {
    std::memcpy(&data_size, data, 8);
    data += 8;
    size -= 8;
  }
  try {
    const auto entries = moe::parse_safetensors_header(
        std::string_view(reinterpret_cast<const char*>(data), size), data_size, "fuzz");
    for (const auto& e : entries) {
      if (e.end > data_size || e.end < e.begin) __builtin_trap();  // accepted headers must be consistent
    }
  } catch (const moe::Error&) {
  }
  return 0;
}
