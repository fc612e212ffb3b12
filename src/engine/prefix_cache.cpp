#include "engine/prefix_cache.h"

#include <algorithm>
#include <functional>
#include <queue>

#include "core/error.h"

namespace moe {

namespace {
constexpr uint64_t kRootKey = 0x9e3779b97f4a7c15ull;
uint64_t mix(uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

PrefixCache::PrefixCache(PageAllocator& allocator, int64_t page_size)
    : allocator_(allocator), page_size_(page_size), nodes_(size_t(allocator.total_pages())) {
  MOE_CHECK(page_size > 0, "prefix cache: page size must be > 0");
}

PrefixCache::~PrefixCache() {
  std::vector<int32_t> held;
  for (size_t p = 0; p < nodes_.size(); ++p)
    if (nodes_[p].indexed) held.push_back(int32_t(p));
  allocator_.release(held);
}

uint64_t PrefixCache::chain(uint64_t parent_key, std::span<const int32_t> tokens) {
  uint64_t h = mix(parent_key);
  for (int32_t t : tokens) h = mix(h ^ (uint64_t(uint32_t(t)) + 0x632be59bd9b4e019ull));
  return h;
}

std::vector<int32_t> PrefixCache::match(std::span<const int32_t> tokens, int64_t max_pages) {
  std::vector<int32_t> out;
  const int64_t n = std::min<int64_t>(max_pages, int64_t(tokens.size()) / page_size_);
  uint64_t key = kRootKey;
  int32_t parent = -1;
  for (int64_t i = 0; i < n; ++i) {
    const auto page_tokens = tokens.subspan(size_t(i * page_size_), size_t(page_size_));
    key = chain(key, page_tokens);
    const auto it = by_key_.find(key);
    if (it == by_key_.end()) break;
    const Node& node = nodes_[size_t(it->second)];
    if (node.parent != parent || !std::equal(node.tokens.begin(), node.tokens.end(), page_tokens.begin())) break;
    out.push_back(it->second);
    parent = it->second;
  }
  ++clock_;
  for (int32_t p : out) {
    nodes_[size_t(p)].used = clock_;
    allocator_.retain(p);
  }
  return out;
}

int64_t PrefixCache::insert(std::span<const int32_t> tokens, std::span<const int32_t> pages, int64_t from,
                            int64_t to) {
  MOE_CHECK(from >= 0 && from <= to && to <= int64_t(pages.size()) && to * page_size_ <= int64_t(tokens.size()),
            "prefix cache: pages [{}, {}) out of range", from, to);
  int32_t parent = from == 0 ? -1 : pages[size_t(from - 1)];
  MOE_CHECK(parent < 0 || nodes_[size_t(parent)].indexed, "prefix cache: page {} continues a page that is not indexed",
            from);
  uint64_t key = parent < 0 ? kRootKey : nodes_[size_t(parent)].key;
  ++clock_;
  for (int64_t i = from; i < to; ++i) {
    const int32_t page = pages[size_t(i)];
    const auto page_tokens = tokens.subspan(size_t(i * page_size_), size_t(page_size_));
    key = chain(key, page_tokens);
    Node& node = nodes_[size_t(page)];
    if (node.indexed || by_key_.count(key)) return i - from;  // indexed already (or a collision): stop the chain
    node = Node{true, key, parent, 0, clock_, std::vector<int32_t>(page_tokens.begin(), page_tokens.end())};
    by_key_.emplace(key, page);
    allocator_.retain(page);
    if (parent >= 0) ++nodes_[size_t(parent)].children;
    parent = page;
  }
  return to - from;
}

void PrefixCache::drop(int32_t page) {
  Node& node = nodes_[size_t(page)];
  by_key_.erase(node.key);
  if (node.parent >= 0) --nodes_[size_t(node.parent)].children;
  node = Node{};
  allocator_.release({page});
}

int64_t PrefixCache::evictable_pages() const {
  int64_t n = 0;
  for (const auto& [key, page] : by_key_) n += allocator_.refs(page) == 1;
  return n;
}

int64_t PrefixCache::evict(int64_t count) {
  // Min-heap of evictable leaves by last use; a parent joins when its last child goes.
  using Entry = std::pair<uint64_t, int32_t>;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> leaves;
  auto evictable_leaf = [&](int32_t p) {
    const Node& n = nodes_[size_t(p)];
    return n.indexed && n.children == 0 && allocator_.refs(p) == 1;
  };
  for (const auto& [key, page] : by_key_)
    if (evictable_leaf(page)) leaves.emplace(nodes_[size_t(page)].used, page);
  int64_t freed = 0;
  while (freed < count && !leaves.empty()) {
    const int32_t page = leaves.top().second;
    leaves.pop();
    const int32_t parent = nodes_[size_t(page)].parent;
    drop(page);
    ++freed;
    ++evicted_;
    if (parent >= 0 && evictable_leaf(parent)) leaves.emplace(nodes_[size_t(parent)].used, parent);
  }
  return freed;
}

std::optional<std::vector<int32_t>> PrefixCache::allocate(int64_t count) {
  const int64_t short_by = count - allocator_.free_pages();
  if (short_by > 0) {
    if (short_by > evictable_pages()) return std::nullopt;
    evict(short_by);
  }
  return allocator_.allocate(count);
}

}  // namespace moe
