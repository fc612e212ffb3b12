// libFuzzer target: the TCP rendezvous's messages from the network (src/dist/tcp_rendezvous.h) on arbitrary
// bytes. The first byte picks the message (even: a peer's hello, with the job size from the second byte; odd:
// rank 0's blob-length header). Only moe::Error may escape, and an accepted hello names a rank in range.
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "dist/tcp_rendezvous.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  try {
    if (data[0] % 2 == 0) {
      const int job = 1 + data[1];
      const int rank = moe::dist::parse_hello(data + 2, size - 2, job);
      if (rank < 1 || rank >= job) std::abort();
    } else {
      const uint32_t n = moe::dist::parse_blob_length(data + 1, size - 1);
      if (n > (1u << 20)) std::abort();
    }
  } catch (const moe::Error&) {
  }
  return 0;
}
