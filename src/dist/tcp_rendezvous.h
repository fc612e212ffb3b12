#pragma once
// The launcher's rendezvous (no MPI): rank 0 listens on host:port, every other rank connects and receives one
// blob from it (the ncclUniqueId, 128 bytes). Used by NcclCommunicator when the job was not started by mpirun.
#include <cstdint>
#include <string>
#include <vector>

namespace moe::dist {

struct Rendezvous {
  std::string host = "127.0.0.1";
  int port = 29500;
  int rank = 0, size = 1;
  int timeout_s = 60;  // rank 0: for every peer to connect; the others: for rank 0 to listen
};

// The two messages' parsers (what arrives from the network), exposed for tests and the fuzz target:
// a peer's hello, 8 bytes "MOE1" + its rank (int32, host order), must name a rank in [1, size); rank 0's header,
// 4 bytes, the blob's length (uint32, at most 1 MiB). Both throw moe::Error naming what was wrong.
int parse_hello(const uint8_t* data, size_t n, int size);
uint32_t parse_blob_length(const uint8_t* data, size_t n);

// Rank 0 sends `blob` to ranks 1..size-1 and returns it; the others return what rank 0 sent. Each peer
// announces its rank, so two peers claiming one rank, a rank out of range or a timeout is an error naming it.
std::vector<uint8_t> rendezvous_share(const Rendezvous& r, const std::vector<uint8_t>& blob);

}  // namespace moe::dist
