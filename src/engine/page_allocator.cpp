#include "engine/page_allocator.h"

#include "core/error.h"

namespace moe {

PageAllocator::PageAllocator(int64_t num_pages) : total_(num_pages), refs_(size_t(num_pages), 0) {
  free_.reserve(size_t(num_pages));
  for (int64_t p = num_pages - 1; p >= 0; --p) free_.push_back(int32_t(p));  // hand out low pages first
}

std::optional<std::vector<int32_t>> PageAllocator::allocate(int64_t count) {
  if (count > free_pages()) return std::nullopt;
  std::vector<int32_t> out(free_.end() - count, free_.end());
  free_.resize(free_.size() - size_t(count));
  for (int32_t p : out) refs_[size_t(p)] = 1;
  return out;
}

void PageAllocator::retain(int32_t page) {
  MOE_CHECK(page >= 0 && page < total_, "retain of page {} outside the cache", page);
  MOE_CHECK(refs_[size_t(page)] > 0, "retain of page {}, which is free", page);
  ++refs_[size_t(page)];
}

void PageAllocator::release(const std::vector<int32_t>& pages) {
  for (int32_t p : pages) {
    MOE_CHECK(p >= 0 && p < total_, "release of page {} outside the cache", p);
    MOE_CHECK(refs_[size_t(p)] > 0, "cache page {} was released more often than it was held", p);
    if (--refs_[size_t(p)] == 0) free_.push_back(p);
  }
}

}  // namespace moe
