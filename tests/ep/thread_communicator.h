#pragma once
// Ranks as threads of one test process: a communicator per thread over shared state, so expert-parallel code
// runs in ordinary unit tests (no MPI needed; the mpirun tests cover the real transport). Every collective posts
// this rank's buffers, waits for all ranks, copies what it receives from the peers' posted buffers, and waits
// again so that no buffer is reused while a peer still reads it.
#include <algorithm>
#include <barrier>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "dist/communicator.h"

namespace moe::test {

class ThreadGroup {
 public:
  explicit ThreadGroup(int size) : size_(size), sync_(size), posts_(size_t(size)) {}
  int size() const { return size_; }

  struct Post {
    const void* send = nullptr;
    const size_t *counts = nullptr, *displs = nullptr;
  };
  void post(int rank, Post p) { posts_[size_t(rank)] = p; }
  const Post& posted(int rank) const { return posts_[size_t(rank)]; }
  void wait() { sync_.arrive_and_wait(); }

 private:
  int size_;
  std::barrier<> sync_;
  std::vector<Post> posts_;
};

class ThreadCommunicator final : public dist::Communicator {
 public:
  ThreadCommunicator(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_.size(); }
  std::string name() const override { return "threads"; }
  void barrier() override { g_.wait(); }
  void all_to_all_v(const void* send, std::span<const size_t> send_counts, std::span<const size_t> send_displs,
                    void* recv, std::span<const size_t> recv_counts, std::span<const size_t> recv_displs) override {
    g_.post(rank_, {send, send_counts.data(), send_displs.data()});
    g_.wait();
    for (int p = 0; p < size(); ++p) {
      const auto& q = g_.posted(p);
      if (q.counts[rank_] != recv_counts[size_t(p)]) std::abort();  // the counts must agree pairwise
      if (recv_counts[size_t(p)])
        std::memcpy(static_cast<char*>(recv) + recv_displs[size_t(p)],
                    static_cast<const char*>(q.send) + q.displs[rank_], recv_counts[size_t(p)]);
    }
    g_.wait();
  }
  // Reductions sum in rank order, like the MPI communicator.
  void all_reduce_sum(std::span<float> d) override { reduce(d); }
  void all_reduce_sum(std::span<double> d) override { reduce(d); }
  void all_gather(std::span<const float> send, std::span<float> recv) override { gather(send, recv); }
  void all_gather(std::span<const double> send, std::span<double> recv) override { gather(send, recv); }
  void reduce_scatter_sum(std::span<const float> send, std::span<float> recv) override { scatter(send, recv); }
  void reduce_scatter_sum(std::span<const double> send, std::span<double> recv) override { scatter(send, recv); }
  void broadcast(void* data, size_t bytes, int root) override {
    g_.post(rank_, {data, nullptr, nullptr});
    g_.wait();
    if (rank_ != root && bytes) std::memcpy(data, g_.posted(root).send, bytes);
    g_.wait();
  }

 private:
  template <class T>
  void reduce(std::span<T> d) {
    std::vector<T> sum(d.size(), T(0));
    g_.post(rank_, {d.data(), nullptr, nullptr});
    g_.wait();
    for (int p = 0; p < size(); ++p)
      for (size_t i = 0; i < d.size(); ++i) sum[i] += static_cast<const T*>(g_.posted(p).send)[i];
    g_.wait();
    std::copy(sum.begin(), sum.end(), d.begin());
  }
  template <class T>
  void gather(std::span<const T> send, std::span<T> recv) {
    g_.post(rank_, {send.data(), nullptr, nullptr});
    g_.wait();
    for (int p = 0; p < size(); ++p)
      std::memcpy(recv.data() + size_t(p) * send.size(), g_.posted(p).send, send.size_bytes());
    g_.wait();
  }
  template <class T>
  void scatter(std::span<const T> send, std::span<T> recv) {
    g_.post(rank_, {send.data(), nullptr, nullptr});
    g_.wait();
    for (size_t i = 0; i < recv.size(); ++i) {
      T v = 0;
      for (int p = 0; p < size(); ++p) v += static_cast<const T*>(g_.posted(p).send)[size_t(rank_) * recv.size() + i];
      recv[i] = v;
    }
    g_.wait();
  }

  ThreadGroup& g_;
  int rank_;
};

// Runs fn(comm) on `size` threads, one rank each; rethrows the first exception.
inline void run_ranks(int size, const std::function<void(dist::Communicator&)>& fn) {
  ThreadGroup group(size);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(size));
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      ThreadCommunicator comm(group, r);
      try {
        fn(comm);
      } catch (...) {
        errors[size_t(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace moe::test
