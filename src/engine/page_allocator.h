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
  // `partitions` > 1 (data-parallel attention, engine/dp_attention.h): the pages are cut into that many equal
  // parts (num_pages must divide), part r = [r * n, (r + 1) * n), and a sequence's pages come from one part.
  explicit PageAllocator(int64_t num_pages, int32_t partitions = 1);
  // `count` pages, each with one reference, or nothing when fewer are free (the caller waits; nothing is
  // over-committed). Without partitions; with them, from part 0 (allocate_in).
  std::optional<std::vector<int32_t>> allocate(int64_t count) { return allocate_in(count, 0); }
  std::optional<std::vector<int32_t>> allocate_in(int64_t count, int32_t partition);
  int32_t partitions() const { return int32_t(free_.size()); }
  int64_t partition_pages() const { return total_ / partitions(); }
  int64_t free_pages_in(int32_t partition) const { return int64_t(free_.at(size_t(partition)).size()); }
  // The part with the most free pages (the fewest in use), ties to the lower one: where a new sequence goes.
  int32_t emptiest_partition() const;
  void retain(int32_t page);                           // one more holder of an allocated page
  void release(const std::vector<int32_t>& pages);     // drops one reference each; a page is free at zero
  int32_t refs(int32_t page) const { return refs_.at(size_t(page)); }
  int64_t free_pages() const;
  int64_t total_pages() const { return total_; }
  int64_t used_pages() const { return total_ - free_pages(); }

 private:
  int64_t total_;
  std::vector<std::vector<int32_t>> free_;  // per part
  std::vector<int32_t> refs_;  // per page; 0 for a free page
};

// Pages needed for `tokens` positions.
inline int64_t pages_for(int64_t tokens, int64_t page_size) { return (tokens + page_size - 1) / page_size; }

}  // namespace moe
