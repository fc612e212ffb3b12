// libFuzzer target: config.json parsing and validation on arbitrary bytes. Only moe::Error may escape.
#include <nlohmann/json.hpp>

#include <cstdint>

#include "core/error.h"
#include "io/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    const moe::ModelConfig c = moe::ModelConfig::from_json(j, "fuzz");
    if (c.hidden_size <= 0 || c.vocab_size <= 0) __builtin_trap();  // validation must have rejected these
    if (c.packed_int && (c.packed_int->num_bits != 4 || c.hidden_size % c.packed_int->group_size))
      __builtin_trap();  // nor an INT4 scheme the loader cannot read
  } catch (const moe::Error&) {
  }
  return 0;
}
