#pragma once
// The communicator layer (issue 12): collectives between the ranks of one job, behind one interface so that the
// trainer and expert-parallel inference are written once and run on CPU ranks (MPI, in CI) and on GPUs (NCCL).
//
// Ownership: a Communicator is an object owned by whoever runs the job (the CLI command), passed by reference;
// nothing here is process-wide except what MPI itself is (MPI_Init happens once per process, in MpiCommunicator).
//
// Buffers are host memory for SingleCommunicator and MpiCommunicator, device memory (of the communicator's
// device) for NcclCommunicator. Every call is collective: every rank calls it, in the same order, with the
// same sizes (all_to_all_v: counts that agree pairwise: what r sends to p is what p receives from r).
//
// Non-blocking exchange (two-micro-batch overlap): all_to_all_v_start returns a handle and the exchange completes
// by its wait(); the buffers and spans' contents must stay untouched until then. Exchanges are started in the same
// order on every rank (like any collective); blocking collectives may run while some are pending.
//
// Reductions: the CPU implementations sum in a fixed order (rank 0, 1, ..., N-1, accumulated in double), so
// every rank gets the same bits and a result does not depend on the MPI library's choice of algorithm.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace moe::dist {

// A started exchange: wait() completes it (once; the destructor waits if it was not called).
class PendingExchange {
 public:
  virtual ~PendingExchange() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "single", "mpi", "nccl"
  virtual void barrier() = 0;

  // In place: data = sum over ranks of data. Every rank passes the same n.
  virtual void all_reduce_sum(std::span<float> data) = 0;
  virtual void all_reduce_sum(std::span<double> data) = 0;
  // recv [size() * send.size()]: rank r's send at r * send.size().
  virtual void all_gather(std::span<const float> send, std::span<float> recv) = 0;
  virtual void all_gather(std::span<const double> send, std::span<double> recv) = 0;
  // send [size() * recv.size()]: recv = sum over ranks of their send's block rank() (block r at r * recv.size()).
  virtual void reduce_scatter_sum(std::span<const float> send, std::span<float> recv) = 0;
  virtual void reduce_scatter_sum(std::span<const double> send, std::span<double> recv) = 0;
  // Bytes: to peer p go send_counts[p] bytes from send + send_displs[p]; from peer p arrive recv_counts[p] bytes
  // at recv + recv_displs[p]. Counts may be 0; each span has size() entries.
  virtual void all_to_all_v(const void* send, std::span<const size_t> send_counts, std::span<const size_t> send_displs,
                            void* recv, std::span<const size_t> recv_counts, std::span<const size_t> recv_displs) = 0;
  // all_to_all_v started (see above). The default runs the blocking all_to_all_v now and returns a handle with
  // nothing left to do: SingleCommunicator, and NCCL, whose all_to_all_v is already asynchronous on its stream.
  // MpiCommunicator: MPI_Ialltoallv, completed by MPI_Wait.
  virtual std::unique_ptr<PendingExchange> all_to_all_v_start(const void* send, std::span<const size_t> send_counts,
                                                              std::span<const size_t> send_displs, void* recv,
                                                              std::span<const size_t> recv_counts,
                                                              std::span<const size_t> recv_displs);
  // data (bytes) from root to every rank.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;

  // The GPU implementation enqueues its collectives on this stream (a cudaStream_t), so they order with the
  // backend's kernels and overlap other streams' compute; the CPU implementations have none and ignore it.
  virtual void set_stream(void* stream) { (void)stream; }
  virtual void* stream() const { return nullptr; }
};

// One rank: every collective is a copy (or nothing).
class SingleCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "single"; }
  void barrier() override {}
  void all_reduce_sum(std::span<float>) override {}
  void all_reduce_sum(std::span<double>) override {}
  void all_gather(std::span<const float> send, std::span<float> recv) override;
  void all_gather(std::span<const double> send, std::span<double> recv) override;
  void reduce_scatter_sum(std::span<const float> send, std::span<float> recv) override;
  void reduce_scatter_sum(std::span<const double> send, std::span<double> recv) override;
  void all_to_all_v(const void* send, std::span<const size_t> send_counts, std::span<const size_t> send_displs,
                    void* recv, std::span<const size_t> recv_counts, std::span<const size_t> recv_displs) override;
  void broadcast(void*, size_t, int root) override;
};

// Whether this build has MPI (CMake found it) and NCCL (a CUDA build with libnccl).
bool have_mpi();
bool have_nccl();
// The MPI library this build links (its file, found from one of its symbols), for locating the mpirun of the
// same installation; empty without MPI.
std::string mpi_library_path();

// MPI_COMM_WORLD's ranks (a duplicate of it). Initialises MPI on first use in the process and finalises it when
// the communicator that initialised it is destroyed. Throws moe::Error when the build has no MPI.
std::unique_ptr<Communicator> make_mpi_communicator();

// NCCL over GPUs, one rank per GPU (device = the CUDA device index this rank uses). The ncclUniqueId is
// bootstrapped through `bootstrap` (an MPI communicator of the same ranks: broadcast from its rank 0) or, when
// that is null, through a TCP rendezvous: rank 0 listens on host:port and sends the id to the other size-1
// ranks. Throws moe::Error when the build has no NCCL.
struct NcclOptions {
  int device = 0;
  Communicator* bootstrap = nullptr;
  std::string host = "127.0.0.1";  // TCP rendezvous (bootstrap == null)
  int port = 29500;
  int rank = 0, size = 1;
  int timeout_s = 60;  // how long ranks wait for the rendezvous
};
std::unique_ptr<Communicator> make_nccl_communicator(const NcclOptions& options);

}  // namespace moe::dist
