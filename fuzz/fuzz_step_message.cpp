// libFuzzer target: the step message rank 0 broadcasts in expert-parallel serving (src/engine/ep_serving.h), on
// arbitrary bytes. Only moe::Error may escape; a message accepted without a placement encodes back to the same
// bytes (the placement's JSON may be spelled differently, so that one is only decoded again).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "engine/ep_serving.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    const moe::StepMessage m = moe::decode_step(bytes);
    const std::string again = moe::encode_step(m);
    if (!m.placement && again != bytes) std::abort();
    if (m.placement) (void)moe::decode_step(again);
  } catch (const moe::Error&) {
  }
  return 0;
}
