// NcclCommunicator on GPUs: the same collective checks as the CPU communicators, through a test adapter that
// stages host buffers to the device. One rank always (the 1-GPU machine); two ranks as two threads on two GPUs
// when there are two, skipped visibly otherwise.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <unistd.h>

#include "collective_checks.h"
#include "core/error.h"

namespace moe::dist {
namespace {

using namespace moe::dist::testing;

// Host spans in, device buffers to the NCCL communicator, host spans out (synchronising its stream).
class Staged final : public Communicator {
 public:
  explicit Staged(std::unique_ptr<Communicator> c) : c_(std::move(c)) {}
  int rank() const override { return c_->rank(); }
  int size() const override { return c_->size(); }
  std::string name() const override { return c_->name(); }
  void barrier() override { c_->barrier(); }
  void all_reduce_sum(std::span<float> d) override { inplace(d); }
  void all_reduce_sum(std::span<double> d) override { inplace(d); }
  void all_gather(std::span<const float> s, std::span<float> r) override { two(s, r, 0); }
  void all_gather(std::span<const double> s, std::span<double> r) override { two(s, r, 0); }
  void reduce_scatter_sum(std::span<const float> s, std::span<float> r) override { two(s, r, 1); }
  void reduce_scatter_sum(std::span<const double> s, std::span<double> r) override { two(s, r, 1); }
  void all_to_all_v(const void* send, std::span<const size_t> sc, std::span<const size_t> sd, void* recv,
                    std::span<const size_t> rc, std::span<const size_t> rd) override {
    size_t sb = 0, rb = 0;
    for (size_t p = 0; p < sc.size(); ++p) sb = std::max(sb, sd[p] + sc[p]), rb = std::max(rb, rd[p] + rc[p]);
    void *ds = dev(sb), *dr = dev(rb);
    cudaMemcpy(ds, send, sb, cudaMemcpyHostToDevice);
    cudaMemcpy(dr, recv, rb, cudaMemcpyHostToDevice);
    c_->all_to_all_v(ds, sc, sd, dr, rc, rd);
    finish(recv, dr, rb, {ds, dr});
  }
  void broadcast(void* data, size_t bytes, int root) override {
    void* d = dev(bytes);
    cudaMemcpy(d, data, bytes, cudaMemcpyHostToDevice);
    c_->broadcast(d, bytes, root);
    finish(data, d, bytes, {d});
  }

 private:
  void* dev(size_t bytes) {
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(bytes, 1)), cudaSuccess);
    return p;
  }
  void finish(void* host, const void* d, size_t bytes, std::initializer_list<void*> frees) {
    EXPECT_EQ(cudaStreamSynchronize(static_cast<cudaStream_t>(c_->stream())), cudaSuccess);
    cudaMemcpy(host, d, bytes, cudaMemcpyDeviceToHost);
    for (void* p : frees) cudaFree(p);
  }
  template <typename T>
  void inplace(std::span<T> d) {
    T* p = static_cast<T*>(dev(d.size_bytes()));
    cudaMemcpy(p, d.data(), d.size_bytes(), cudaMemcpyHostToDevice);
    c_->all_reduce_sum(std::span<T>(p, d.size()));
    finish(d.data(), p, d.size_bytes(), {p});
  }
  template <typename T>
  void two(std::span<const T> s, std::span<T> r, int op) {
    T* ps = static_cast<T*>(dev(s.size_bytes()));
    T* pr = static_cast<T*>(dev(r.size_bytes()));
    cudaMemcpy(ps, s.data(), s.size_bytes(), cudaMemcpyHostToDevice);
    if (op == 0) c_->all_gather(std::span<const T>(ps, s.size()), std::span<T>(pr, r.size()));
    else c_->reduce_scatter_sum(std::span<const T>(ps, s.size()), std::span<T>(pr, r.size()));
    finish(r.data(), pr, r.size_bytes(), {ps, pr});
  }
  std::unique_ptr<Communicator> c_;
};

int gpus() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

void run_checks(Communicator& c) {
  check_all_reduce<float>(c, 1001, 1);
  check_all_reduce<double>(c, 33, 2);
  check_all_gather<float>(c, 129, 3);
  check_all_gather<double>(c, 5, 4);
  check_reduce_scatter<float>(c, 65, 5);
  check_reduce_scatter<double>(c, 3, 6);
  check_all_to_all_v(c);
  check_broadcast(c, 7);
  c.barrier();
}

TEST(NcclCommunicator, OneRankEveryCollective) {
  if (!have_nccl()) GTEST_SKIP() << "this build has no NCCL";
  if (gpus() < 1) GTEST_SKIP() << "no GPU";
  NcclOptions o;
  o.rank = 0, o.size = 1;  // a one-rank rendezvous needs no network
  Staged c(make_nccl_communicator(o));
  EXPECT_EQ(c.name(), "nccl");
  EXPECT_EQ(c.size(), 1);
  run_checks(c);
}

// Host buffers handed to the communicator itself (expert parallelism's counts, slot lists and step plans): it
// stages them through its own device buffers and waits, so the same checks hold without the adapter.
TEST(NcclCommunicator, OneRankHostBuffersAreStaged) {
  if (!have_nccl()) GTEST_SKIP() << "this build has no NCCL";
  if (gpus() < 1) GTEST_SKIP() << "no GPU";
  NcclOptions o;
  o.rank = 0, o.size = 1;
  auto c = make_nccl_communicator(o);
  run_checks(*c);
}

// The ncclUniqueId broadcast through an MPI communicator (how `mpirun` jobs bootstrap): one rank, MPI's singleton
// when the binary is not started by mpirun.
TEST(NcclCommunicator, OneRankBootstrappedThroughMpi) {
  if (!have_nccl()) GTEST_SKIP() << "this build has no NCCL";
  if (!have_mpi()) GTEST_SKIP() << "this build has no MPI";
  if (gpus() < 1) GTEST_SKIP() << "no GPU";
  std::unique_ptr<Communicator> mpi = make_mpi_communicator();
  if (mpi->size() != 1) GTEST_SKIP() << "run without mpirun (one rank per GPU; this test uses cuda:0)";
  NcclOptions o;
  o.bootstrap = mpi.get();
  Staged c(make_nccl_communicator(o));
  EXPECT_EQ(c.size(), 1);
  run_checks(c);
}

TEST(NcclCommunicator, TwoRanksOnTwoGpusThroughTheTcpRendezvous) {
  if (gpus() < 2) GTEST_SKIP() << "fewer than two GPUs (" << gpus() << "): the two-rank NCCL test needs two";
  const int port = 20000 + int(::getpid() % 20000);
  std::vector<std::string> errors(2);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r)
    ranks.emplace_back([&, r] {
      try {
        NcclOptions o;
        o.device = r, o.rank = r, o.size = 2, o.port = port;
        Staged c(make_nccl_communicator(o));
        cudaSetDevice(r);
        run_checks(c);
      } catch (const std::exception& e) {
        errors[size_t(r)] = e.what();
      }
    });
  for (auto& t : ranks) t.join();
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
}

TEST(NcclCommunicator, BadDeviceIsAnError) {
  if (!have_nccl()) GTEST_SKIP() << "this build has no NCCL";
  NcclOptions o;
  o.device = 1000;
  EXPECT_THROW(make_nccl_communicator(o), Error);
}

}  // namespace
}  // namespace moe::dist
