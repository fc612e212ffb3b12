#include "engine/page_allocator.h"

#include "core/error.h"

namespace moe {

PageAllocator::PageAllocator(int64_t num_pages) : total_(num_pages) {
  free_.reserve(size_t(num_pages));
  for (int64_t p = num_pages - 1; p >= 0; --p) free_.push_back(int32_t(p));  // hand out low pages first
}

std::optional<std::vector<int32_t>> PageAllocator::allocate(int64_t count) {
  if (count > free_pages()) return std::nullopt;
  std::vector<int32_t> out(free_.end() - count, free_.end());
  free_.resize(free_.size() - size_t(count));
  return out;
}

void PageAllocator::release(const std::vector<int32_t>& pages) {
  for (int32_t p : pages) {
    MOE_CHECK(p >= 0 && p < total_, "release of page {} outside the cache", p);
    free_.push_back(p);
  }
  MOE_CHECK(free_pages() <= total_, "a cache page was released twice");
}

}  // namespace moe
