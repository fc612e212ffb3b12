#include <cstring>

#include "core/error.h"
#include "dist/communicator.h"

namespace moe::dist {

namespace {
template <typename T>
void copy_checked(std::span<const T> send, std::span<T> recv, const char* what) {
  MOE_CHECK(send.size() == recv.size(), "dist: {} with one rank: {} values sent but {} received", what, send.size(),
            recv.size());
  std::copy(send.begin(), send.end(), recv.begin());
}
}  // namespace

void SingleCommunicator::all_gather(std::span<const float> s, std::span<float> r) { copy_checked(s, r, "all_gather"); }
void SingleCommunicator::all_gather(std::span<const double> s, std::span<double> r) { copy_checked(s, r, "all_gather"); }
void SingleCommunicator::reduce_scatter_sum(std::span<const float> s, std::span<float> r) {
  copy_checked(s, r, "reduce_scatter_sum");
}
void SingleCommunicator::reduce_scatter_sum(std::span<const double> s, std::span<double> r) {
  copy_checked(s, r, "reduce_scatter_sum");
}

void SingleCommunicator::all_to_all_v(const void* send, std::span<const size_t> send_counts,
                                      std::span<const size_t> send_displs, void* recv,
                                      std::span<const size_t> recv_counts, std::span<const size_t> recv_displs) {
  MOE_CHECK(send_counts.size() == 1 && send_displs.size() == 1 && recv_counts.size() == 1 && recv_displs.size() == 1,
            "dist: all_to_all_v with one rank takes one count and displacement per direction");
  MOE_CHECK(send_counts[0] == recv_counts[0], "dist: all_to_all_v with one rank sends {} bytes but receives {}",
            send_counts[0], recv_counts[0]);
  if (send_counts[0] > 0)
    std::memmove(static_cast<char*>(recv) + recv_displs[0], static_cast<const char*>(send) + send_displs[0],
                 send_counts[0]);
}

void SingleCommunicator::broadcast(void*, size_t, int root) {
  MOE_CHECK(root == 0, "dist: broadcast from rank {} with one rank", root);
}

namespace {
struct DoneExchange final : PendingExchange {
  void wait() override {}
};
}  // namespace

std::unique_ptr<PendingExchange> Communicator::all_to_all_v_start(const void* send, std::span<const size_t> send_counts,
                                                                  std::span<const size_t> send_displs, void* recv,
                                                                  std::span<const size_t> recv_counts,
                                                                  std::span<const size_t> recv_displs) {
  all_to_all_v(send, send_counts, send_displs, recv, recv_counts, recv_displs);
  return std::make_unique<DoneExchange>();
}

}  // namespace moe::dist
