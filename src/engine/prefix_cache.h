#pragma once
// Prefix caching over the paged latent cache: remembers which pages hold the latents of which token prefixes, so
// that a request whose prompt starts with a cached prefix reuses those pages instead of recomputing them. The
// latent at position i depends only on tokens 0..i, and a reused page sits at the same positions, so a reused
// page holds exactly what a fresh prefill would write there.
//
// Only full pages are indexed. A page is keyed by a hash of its page_size tokens chained with its parent's key
// (the page before it in the sequence, none for the first), so a key stands for the whole prefix up to the page's
// end. A node also keeps its tokens and its parent page, and a lookup compares them: a hash collision is a miss,
// never wrong latents.
//
// Holders: the index holds one reference on each page it indexes (PageAllocator refcounts), each sequence using a
// page holds its own. A page is evictable when only the index holds it; eviction takes the least recently used
// leaf (a page no indexed page continues) first, so chains shrink from their ends. insert() keeps the invariant
// that whoever holds an indexed page also holds its parent, so every page held only by the index can be reached
// by evicting leaves: evictable() pages are as good as free for admission.
//
// Not thread-safe: the scheduler thread owns it, next to the allocator.
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "engine/page_allocator.h"

namespace moe {

class PrefixCache {
 public:
  PrefixCache(PageAllocator& allocator, int64_t page_size);
  ~PrefixCache();  // gives the index's references back

  // The pages holding the longest indexed prefix of `tokens`, whole pages only and at most max_pages of them,
  // first page first; the caller gets one reference on each (released through the allocator like its own).
  std::vector<int32_t> match(std::span<const int32_t> tokens, int64_t max_pages);

  // Indexes pages[i] for i in [from, to) as holding tokens[i*page_size, (i+1)*page_size), continuing the chain
  // of pages[from - 1] (which must be indexed unless from == 0). The caller holds every page of `pages`. Returns
  // how many it indexed: fewer than asked when a page's prefix is already indexed under another page (two
  // sequences prefilled the same prefix at once); the caller then stops indexing that sequence.
  int64_t insert(std::span<const int32_t> tokens, std::span<const int32_t> pages, int64_t from, int64_t to);

  // Frees up to `count` pages held only by the index, least recently used leaves first; returns how many it freed.
  int64_t evict(int64_t count);
  // allocator.allocate(count), evicting what it must first; nothing (and nothing evicted) when even evicting every
  // evictable page would not make room.
  std::optional<std::vector<int32_t>> allocate(int64_t count);

  int64_t indexed_pages() const { return int64_t(by_key_.size()); }
  int64_t evictable_pages() const;  // indexed pages no sequence holds
  int64_t evicted_pages() const { return evicted_; }  // since construction
  int64_t page_size() const { return page_size_; }

 private:
  struct Node {
    bool indexed = false;
    uint64_t key = 0;
    int32_t parent = -1;  // the page before it in its prefix; -1 for a first page
    int32_t children = 0;  // indexed pages continuing it
    uint64_t used = 0;     // LRU clock at the last match or insert
    std::vector<int32_t> tokens;
  };
  static uint64_t chain(uint64_t parent_key, std::span<const int32_t> tokens);
  void drop(int32_t page);  // un-indexes a leaf and releases the index's reference

  PageAllocator& allocator_;
  int64_t page_size_;
  std::vector<Node> nodes_;  // by page id
  std::unordered_map<uint64_t, int32_t> by_key_;
  uint64_t clock_ = 0;
  int64_t evicted_ = 0;
};

}  // namespace moe
