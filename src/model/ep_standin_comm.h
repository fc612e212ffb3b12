#pragma once
// TEMPORARY stand-in for dist/communicator.h (helper `dist` commits the real one): the part of its interface that
// expert parallelism uses, with the same names, so that the code switches to the real header by changing one
// include. Deleted when branch `dist` is merged.
#include <cstddef>
#include <span>
#include <string>

namespace moe::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;
  virtual void barrier() = 0;
  virtual void all_to_all_v(const void* send, std::span<const size_t> send_counts, std::span<const size_t> send_displs,
                            void* recv, std::span<const size_t> recv_counts, std::span<const size_t> recv_displs) = 0;
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
};

}  // namespace moe::dist
