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

// Rank 0 sends `blob` to ranks 1..size-1 and returns it; the others return what rank 0 sent. Each peer
// announces its rank, so two peers claiming one rank, a rank out of range or a timeout is an error naming it.
std::vector<uint8_t> rendezvous_share(const Rendezvous& r, const std::vector<uint8_t>& blob);

}  // namespace moe::dist
