// PrefixCache against hand-worked expectations: which pages a lookup reuses, the references it takes and gives
// back, and the order of eviction (least recently used leaves first, never a page a sequence holds).
#include <gtest/gtest.h>

#include <numeric>

#include "core/error.h"
#include "engine/prefix_cache.h"

namespace moe {
namespace {

constexpr int64_t kPage = 4;

std::vector<int32_t> iota_tokens(size_t n, int32_t first) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

TEST(PrefixCache, MatchesTheLongestIndexedPrefixOfWholePages) {
  PageAllocator alloc(16);
  PrefixCache cache(alloc, kPage);
  const auto a = iota_tokens(14, 100);  // 3 whole pages and 2 tokens
  auto pages = *alloc.allocate(4);
  EXPECT_EQ(cache.insert(a, pages, 0, 3), 3);
  EXPECT_EQ(cache.indexed_pages(), 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(alloc.refs(pages[size_t(i)]), 2) << "the sequence's and the index's";
  EXPECT_EQ(alloc.refs(pages[3]), 1) << "the partial page is never indexed";

  // The same prompt: all three whole pages; capped by max_pages.
  auto m = cache.match(a, 10);
  EXPECT_EQ(m, std::vector<int32_t>(pages.begin(), pages.begin() + 3));
  EXPECT_EQ(alloc.refs(pages[0]), 3);
  alloc.release(m);
  m = cache.match(a, 2);
  EXPECT_EQ(m, std::vector<int32_t>(pages.begin(), pages.begin() + 2));
  alloc.release(m);
  // A prompt that differs in its third page (token 9) reuses two; in its first, none.
  auto b = a;
  b[9] = 7;
  m = cache.match(b, 10);
  EXPECT_EQ(m, std::vector<int32_t>(pages.begin(), pages.begin() + 2));
  alloc.release(m);
  b[1] = 7;
  EXPECT_TRUE(cache.match(b, 10).empty());
  // A page's tokens alone are not enough: the same second page after another first page is a miss.
  auto c = a;
  c[0] = 5;
  EXPECT_TRUE(cache.match(std::span<const int32_t>(c).subspan(0, 8), 2).empty());
  // Shorter than a page: nothing.
  EXPECT_TRUE(cache.match(std::span<const int32_t>(a).subspan(0, 3), 1).empty());

  alloc.release(pages);  // the sequence ends: its indexed pages are now held by the index alone
  EXPECT_EQ(cache.evictable_pages(), 3);
  EXPECT_EQ(alloc.free_pages(), 16 - 3);
}

TEST(PrefixCache, SecondSequenceWithTheSamePrefixIndexesNothingTwice) {
  PageAllocator alloc(8);
  PrefixCache cache(alloc, kPage);
  const auto a = iota_tokens(8, 1);
  auto pa = *alloc.allocate(2), pb = *alloc.allocate(2);
  EXPECT_EQ(cache.insert(a, pa, 0, 1), 1);
  EXPECT_EQ(cache.insert(a, pb, 0, 2), 0) << "the first page is indexed under pa[0] already";
  EXPECT_EQ(cache.insert(a, pa, 1, 2), 1) << "pa continues its own chain";
  EXPECT_EQ(alloc.refs(pb[0]), 1);
  alloc.release(pa);
  alloc.release(pb);
  EXPECT_EQ(alloc.free_pages(), 6);
  EXPECT_EQ(cache.evictable_pages(), 2);
  EXPECT_THROW(cache.insert(a, pb, 1, 2), Error) << "continuing a page that is not indexed";
}

TEST(PrefixCache, EvictsLeastRecentlyUsedLeavesAndNeverHeldPages) {
  PageAllocator alloc(6);
  PrefixCache cache(alloc, kPage);
  const auto x = iota_tokens(8, 10), y = iota_tokens(8, 50), z = iota_tokens(8, 90);
  auto px = *alloc.allocate(2), py = *alloc.allocate(2), pz = *alloc.allocate(2);
  cache.insert(x, px, 0, 2);
  cache.insert(y, py, 0, 2);
  cache.insert(z, pz, 0, 2);
  alloc.release(px);
  alloc.release(py);
  alloc.release(pz);
  EXPECT_EQ(alloc.free_pages(), 0);
  EXPECT_EQ(cache.evictable_pages(), 6);
  alloc.release(cache.match(x, 2));  // x is now the most recently used, y the least
  auto held = cache.match(z, 1);     // a sequence holds z's first page
  EXPECT_EQ(cache.evictable_pages(), 5);

  // One page: y's leaf goes first (y's first page is then a leaf, but older than anything else).
  auto got = cache.allocate(1);
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, std::vector<int32_t>{py[1]});
  EXPECT_EQ(cache.match(y, 2), std::vector<int32_t>{py[0]});  // uses y again: now z's leaf is the oldest
  alloc.release({py[0]});
  auto got2 = cache.allocate(2);
  ASSERT_TRUE(got2);
  EXPECT_EQ(*got2, (std::vector<int32_t>{pz[1], px[1]})) << "z's leaf then x's; z's first page is held";
  // More than could ever be freed: nothing is evicted.
  EXPECT_EQ(cache.evictable_pages(), 2);  // x's and y's first pages
  EXPECT_FALSE(cache.allocate(3));
  EXPECT_EQ(cache.indexed_pages(), 3);
  auto got3 = cache.allocate(2);
  ASSERT_TRUE(got3);
  EXPECT_EQ(cache.indexed_pages(), 1);
  EXPECT_EQ(cache.match(z, 2), std::vector<int32_t>{pz[0]});
  alloc.release({pz[0]});
  alloc.release(held);
  alloc.release(*got);
  alloc.release(*got2);
  alloc.release(*got3);
  EXPECT_EQ(alloc.free_pages(), 5);
  EXPECT_EQ(cache.evict(10), 1);
  EXPECT_EQ(cache.evicted_pages(), 1 + 2 + 2 + 1);
  EXPECT_EQ(alloc.free_pages(), 6) << "every reference given back";
}

TEST(PrefixCache, DestructorGivesTheIndexReferencesBack) {
  PageAllocator alloc(4);
  {
    PrefixCache cache(alloc, kPage);
    const auto a = iota_tokens(8, 3);
    auto p = *alloc.allocate(2);
    cache.insert(a, p, 0, 2);
    alloc.release(p);
    EXPECT_EQ(alloc.free_pages(), 2);
  }
  EXPECT_EQ(alloc.free_pages(), 4);
}

TEST(PageAllocator, ReferenceCounts) {
  PageAllocator alloc(2);
  auto p = *alloc.allocate(1);
  alloc.retain(p[0]);
  alloc.release(p);
  EXPECT_EQ(alloc.free_pages(), 1);
  alloc.release(p);
  EXPECT_EQ(alloc.free_pages(), 2);
  EXPECT_THROW(alloc.release(p), Error);
  EXPECT_THROW(alloc.retain(p[0]), Error);
}

}  // namespace
}  // namespace moe
