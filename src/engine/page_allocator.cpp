#include "engine/page_allocator.h"

#include "core/error.h"

namespace moe {

PageAllocator::PageAllocator(int64_t num_pages, int32_t partitions) : total_(num_pages), refs_(size_t(num_pages), 0) {
  MOE_CHECK(partitions >= 1 && num_pages % partitions == 0, "page allocator: {} pages in {} equal parts", num_pages,
            partitions);
  free_.resize(size_t(partitions));
  const int64_t n = num_pages / partitions;
  for (int32_t r = 0; r < partitions; ++r) {
    free_[size_t(r)].reserve(size_t(n));
    for (int64_t p = n - 1; p >= 0; --p) free_[size_t(r)].push_back(int32_t(r * n + p));  // low pages first
  }
}

std::optional<std::vector<int32_t>> PageAllocator::allocate_in(int64_t count, int32_t partition) {
  MOE_CHECK(partition >= 0 && partition < partitions(), "page allocator: part {} of {}", partition, partitions());
  auto& free = free_[size_t(partition)];
  if (count > int64_t(free.size())) return std::nullopt;
  std::vector<int32_t> out(free.end() - count, free.end());
  free.resize(free.size() - size_t(count));
  for (int32_t p : out) refs_[size_t(p)] = 1;
  return out;
}

int64_t PageAllocator::free_pages() const {
  int64_t n = 0;
  for (const auto& f : free_) n += int64_t(f.size());
  return n;
}

int32_t PageAllocator::emptiest_partition() const {
  int32_t best = 0;
  for (int32_t r = 1; r < partitions(); ++r)
    if (free_[size_t(r)].size() > free_[size_t(best)].size()) best = r;
  return best;
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
    if (--refs_[size_t(p)] == 0) free_[size_t(p / partition_pages())].push_back(p);
  }
}

}  // namespace moe
