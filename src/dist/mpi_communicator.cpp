// MpiCommunicator: Open MPI between CPU processes (one rank per process, launched by mpirun). Reductions are
// done here, not by MPI_Allreduce, so that their order is fixed: an all-to-all brings every rank's block r to
// rank r, which sums them in rank order in double; all_reduce_sum is that reduce-scatter plus an all-gather.
#include "dist/communicator.h"
#include "core/error.h"

#ifdef MOE_HAVE_MPI
#include <dlfcn.h>
#include <mpi.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace moe::dist {

namespace {

int to_int(size_t n, const char* what) {
  MOE_CHECK(n <= size_t(INT_MAX), "dist: {} of {} elements is more than MPI's int counts hold", what, n);
  return int(n);
}

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  fail("dist: {} failed: {}", what, std::string(text, size_t(len)));
}

// A started MPI_Ialltoallv and the count arrays MPI reads until it completes.
struct Pending final : PendingExchange {
  std::vector<int> sc, sd, rc, rd;
  MPI_Request request = MPI_REQUEST_NULL;
  void wait() override {
    if (request == MPI_REQUEST_NULL) return;
    check_mpi(MPI_Wait(&request, MPI_STATUS_IGNORE), "MPI_Wait (all_to_all_v_start)");
  }
  ~Pending() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (request != MPI_REQUEST_NULL && !finalized) MPI_Wait(&request, MPI_STATUS_IGNORE);
  }
};

template <typename T> MPI_Datatype mpi_type();
template <> MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }
template <> MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      // One thread at a time calls MPI, but not always the one that made the communicator (`moe serve --ep`
      // makes its calls from the scheduler's thread): MPI_THREAD_SERIALIZED.
      check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
      // MPI is process-wide by nature: finalise at exit, after every communicator is gone.
      std::atexit([] {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
      });
    }
    check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }
  void barrier() override { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

  void all_reduce_sum(std::span<float> d) override { all_reduce(d); }
  void all_reduce_sum(std::span<double> d) override { all_reduce(d); }
  void all_gather(std::span<const float> s, std::span<float> r) override { gather(s, r); }
  void all_gather(std::span<const double> s, std::span<double> r) override { gather(s, r); }
  void reduce_scatter_sum(std::span<const float> s, std::span<float> r) override { reduce_scatter(s, r); }
  void reduce_scatter_sum(std::span<const double> s, std::span<double> r) override { reduce_scatter(s, r); }

  void all_to_all_v(const void* send, std::span<const size_t> send_counts, std::span<const size_t> send_displs,
                    void* recv, std::span<const size_t> recv_counts, std::span<const size_t> recv_displs) override {
    const size_t n = size_t(size_);
    MOE_CHECK(send_counts.size() == n && send_displs.size() == n && recv_counts.size() == n && recv_displs.size() == n,
              "dist: all_to_all_v takes {} counts and displacements per direction (one per rank)", n);
    std::vector<int> sc(n), sd(n), rc(n), rd(n);
    for (size_t p = 0; p < n; ++p) {
      sc[p] = to_int(send_counts[p], "an all_to_all_v send"), sd[p] = to_int(send_displs[p], "a send displacement");
      rc[p] = to_int(recv_counts[p], "an all_to_all_v receive"), rd[p] = to_int(recv_displs[p], "a receive displacement");
    }
    check_mpi(MPI_Alltoallv(send, sc.data(), sd.data(), MPI_BYTE, recv, rc.data(), rd.data(), MPI_BYTE, comm_),
              "MPI_Alltoallv");
  }

  // MPI_Ialltoallv: the count arrays live in the handle, since MPI reads them until the exchange completes.
  std::unique_ptr<PendingExchange> all_to_all_v_start(const void* send, std::span<const size_t> send_counts,
                                                      std::span<const size_t> send_displs, void* recv,
                                                      std::span<const size_t> recv_counts,
                                                      std::span<const size_t> recv_displs) override {
    const size_t n = size_t(size_);
    MOE_CHECK(send_counts.size() == n && send_displs.size() == n && recv_counts.size() == n && recv_displs.size() == n,
              "dist: all_to_all_v_start takes {} counts and displacements per direction (one per rank)", n);
    auto h = std::make_unique<Pending>();
    h->sc.resize(n), h->sd.resize(n), h->rc.resize(n), h->rd.resize(n);
    for (size_t p = 0; p < n; ++p) {
      h->sc[p] = to_int(send_counts[p], "an all_to_all_v send"), h->sd[p] = to_int(send_displs[p], "a send displacement");
      h->rc[p] = to_int(recv_counts[p], "an all_to_all_v receive");
      h->rd[p] = to_int(recv_displs[p], "a receive displacement");
    }
    check_mpi(MPI_Ialltoallv(send, h->sc.data(), h->sd.data(), MPI_BYTE, recv, h->rc.data(), h->rd.data(), MPI_BYTE,
                             comm_, &h->request),
              "MPI_Ialltoallv");
    return h;
  }

  void broadcast(void* data, size_t bytes, int root) override {
    MOE_CHECK(root >= 0 && root < size_, "dist: broadcast from rank {} of {}", root, size_);
    check_mpi(MPI_Bcast(data, to_int(bytes, "a broadcast"), MPI_BYTE, root, comm_), "MPI_Bcast");
  }

 private:
  template <typename T>
  void gather(std::span<const T> s, std::span<T> r) {
    MOE_CHECK(r.size() == s.size() * size_t(size_), "dist: all_gather of {} values per rank into {} (not {} x {})",
              s.size(), r.size(), size_, s.size());
    check_mpi(MPI_Allgather(s.data(), to_int(s.size(), "an all_gather"), mpi_type<T>(), r.data(),
                            to_int(s.size(), "an all_gather"), mpi_type<T>(), comm_),
              "MPI_Allgather");
  }

  // recv = sum over ranks p = 0..N-1 (in that order, in double) of p's block rank().
  template <typename T>
  void reduce_scatter(std::span<const T> s, std::span<T> r) {
    const size_t n = r.size(), N = size_t(size_);
    MOE_CHECK(s.size() == n * N, "dist: reduce_scatter_sum of {} values into blocks of {} (not {} x {})", s.size(), n,
              size_, n);
    std::vector<T> blocks(n * N);
    check_mpi(MPI_Alltoall(s.data(), to_int(n, "a reduce_scatter_sum"), mpi_type<T>(), blocks.data(),
                           to_int(n, "a reduce_scatter_sum"), mpi_type<T>(), comm_),
              "MPI_Alltoall");
    for (size_t i = 0; i < n; ++i) {
      double acc = 0;
      for (size_t p = 0; p < N; ++p) acc += double(blocks[p * n + i]);
      r[i] = T(acc);
    }
  }

  template <typename T>
  void all_reduce(std::span<T> d) {
    const size_t N = size_t(size_), chunk = (d.size() + N - 1) / N;
    std::vector<T> padded(chunk * N, T(0)), mine(chunk);
    std::copy(d.begin(), d.end(), padded.begin());
    reduce_scatter(std::span<const T>(padded), std::span<T>(mine));
    gather(std::span<const T>(mine), std::span<T>(padded));
    std::copy(padded.begin(), padded.begin() + ptrdiff_t(d.size()), d.begin());
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
};

}  // namespace

bool have_mpi() { return true; }
std::string mpi_library_path() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&MPI_Init), &info) == 0 || !info.dli_fname) return {};
  return info.dli_fname;
}
std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

}  // namespace moe::dist

#else

namespace moe::dist {
bool have_mpi() { return false; }
std::string mpi_library_path() { return {}; }
std::unique_ptr<Communicator> make_mpi_communicator() {
  fail("dist: this build has no MPI (install libopenmpi-dev and openmpi-bin: scripts/install-deps.sh, and rebuild)");
}
}  // namespace moe::dist

#endif
