#pragma once
// Hands out the latent cache's fixed-size pages. Not thread-safe: the scheduler owns it.
#include <cstdint>
#include <optional>
#include <vector>

namespace moe {

class PageAllocator {
 public:
  explicit PageAllocator(int64_t num_pages);
  // `count` pages, or nothing when fewer are free (the caller waits; nothing is over-committed).
  std::optional<std::vector<int32_t>> allocate(int64_t count);
  void release(const std::vector<int32_t>& pages);
  int64_t free_pages() const { return int64_t(free_.size()); }
  int64_t total_pages() const { return total_; }
  int64_t used_pages() const { return total_ - free_pages(); }

 private:
  int64_t total_;
  std::vector<int32_t> free_;
};

// Pages needed for `tokens` positions.
inline int64_t pages_for(int64_t tokens, int64_t page_size) { return (tokens + page_size - 1) / page_size; }

}  // namespace moe
