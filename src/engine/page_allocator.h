#pragma once
// Hands out the latent cache's fixed-size pages, reference-counted: a page may be held by several sequences that
// share a prompt prefix and by the prefix cache (engine/prefix_cache.h); it is free again when the last holder
// releases it. Not thread-safe: the scheduler owns it.
#include <cstdint>
#include <optional>
#include <vector>

namespace moe {

class PageAllocator {
 public:
  explicit PageAllocator(int64_t num_pages);
  // `count` pages, each with one reference, or nothing when fewer are free (the caller waits; nothing is
  // over-committed).
  std::optional<std::vector<int32_t>> allocate(int64_t count);
  void retain(int32_t page);                           // one more holder of an allocated page
  void release(const std::vector<int32_t>& pages);     // drops one reference each; a page is free at zero
  int32_t refs(int32_t page) const { return refs_.at(size_t(page)); }
  int64_t free_pages() const { return int64_t(free_.size()); }
  int64_t total_pages() const { return total_; }
  int64_t used_pages() const { return total_ - free_pages(); }

 private:
  int64_t total_;
  std::vector<int32_t> free_;
  std::vector<int32_t> refs_;  // per page; 0 for a free page
};

// Pages needed for `tokens` positions.
inline int64_t pages_for(int64_t tokens, int64_t page_size) { return (tokens + page_size - 1) / page_size; }

}  // namespace moe
