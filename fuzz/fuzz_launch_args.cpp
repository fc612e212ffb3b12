// libFuzzer target: the launcher's two parsers of outside input (src/cli/launcher.h) on arbitrary bytes: a GPU
// rank's --rendezvous host:port and the CUDA_VISIBLE_DEVICES list. The first byte picks the parser (even:
// rendezvous, odd: GPU list). Only moe::Error may escape; an accepted rendezvous has a host and a port in
// 1..65535, an accepted GPU list no empty entry.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "cli/launcher.h"
#include "core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if (data[0] % 2 == 0) {
      std::string host;
      int port = 0;
      moe::cli::parse_rendezvous(text, host, port);
      if (host.empty() || port < 1 || port > 65535) std::abort();
    } else {
      for (const std::string& id : moe::cli::parse_visible_gpus(text))
        if (id.empty()) std::abort();
    }
  } catch (const moe::Error&) {
  }
  return 0;
}
