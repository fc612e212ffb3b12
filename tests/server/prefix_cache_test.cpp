// The scheduler's prefix cache against the same scheduler without it (and the single-sequence Generator): reused
// pages must hold exactly the latents a fresh prefill writes, so greedy tokens and logprobs are the same; the
// reported cached_tokens follow from the prompts alone; pages come back whatever happens to their requests.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <thread>

#include "engine/scheduler.h"
#include "server/scheduler_util.h"

namespace moe {
namespace {
using namespace moe::test;

constexpr int64_t kPage = 16;

std::vector<int32_t> random_tokens(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(3, 2000);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = d(rng);
  return t;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// One request at a time (each waits for the previous one's end), greedy with logprobs.
std::vector<Result> run_in_turn(Scheduler& sched, const std::vector<std::vector<int32_t>>& ps, int32_t max_tokens) {
  std::vector<Result> out;
  for (const auto& p : ps) {
    auto sink = std::make_shared<EventSink>();
    GenerationRequest r;
    r.prompt = p;
    r.max_tokens = max_tokens;
    r.ignore_eos = true;
    r.top_logprobs = 3;
    sched.submit(r, sink, 0);
    out.push_back(collect(*sink, 1)[0]);
  }
  return out;
}

// What a request can reuse, worked out from the token lists alone: whole pages of its longest common prefix with
// what an earlier request left in the cache (its prompt and the output tokens fed back, i.e. all but the last),
// never the last prompt token.
int64_t expected_cached(const std::vector<int32_t>& prompt, const std::vector<std::vector<int32_t>>& earlier) {
  int64_t best = 0;
  for (const auto& e : earlier) {
    const auto n = std::min(prompt.size(), e.size());
    const auto end = prompt.begin() + std::ptrdiff_t(n);
    const auto common = int64_t(std::mismatch(prompt.begin(), end, e.begin()).first - prompt.begin());
    best = std::max(best, common / kPage);
  }
  return std::min<int64_t>(best, (int64_t(prompt.size()) - 1) / kPage) * kPage;
}

void expect_no_leak(const Scheduler& sched) {
  for (int i = 0; i < 100 && sched.stats().pages_used; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const auto st = sched.stats();
  EXPECT_EQ(st.pages_used, 0) << "a page still has a holder besides the prefix cache";
  EXPECT_EQ(st.pages_free + st.pages_evictable, st.pages_total);
}

// max_step_tokens 12: chunked prefill, chunks straddle pages and a reused prefix ends mid-chunk.
SchedulerOptions options(bool prefix_cache, int64_t cache_tokens = 2048, int32_t step_tokens = 12) {
  SchedulerOptions o;
  o.cache_tokens = cache_tokens;
  o.page_size = kPage;
  o.max_step_tokens = step_tokens;
  o.max_batch = 8;
  o.prefix_cache = prefix_cache;
  return o;
}

// Runs the prompts one at a time with and without the prefix cache (prefill chunks of `step_tokens`) and checks
// tokens, logprobs (within `tolerance`; `output_tolerance` for the turn that reuses output pages) and
// cached_tokens.
void same_as_without(int32_t step_tokens, float tolerance, float output_tolerance) {
  const auto base = random_tokens(40, 1);
  const auto tail = random_tokens(30, 2);
  auto prefix = [&](size_t n) { return std::vector<int32_t>(base.begin(), base.begin() + std::ptrdiff_t(n)); };
  const int32_t n = 8;
  std::vector<std::vector<int32_t>> ps = {
      concat(prefix(40), {7, 8, 9, 10, 11}),  // 45 tokens
      concat(prefix(40), {7, 8, 9, 10, 11}),  // the same again: 2 pages (the third is partial)
      concat(prefix(37), tail),               // diverges inside the third page: 2 pages
      concat(prefix(20), {5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5}),  // 1 page
      prefix(32),                             // exactly 2 pages: the last page is recomputed, 1 reused
      prefix(33),                             // 2 pages
  };
  SchedulerOptions without = options(false, 2048, step_tokens), with = options(true, 2048, step_tokens);
  Scheduler plain(env().model, nullptr, without);
  auto ref = run_in_turn(plain, ps, n);
  // The next turn of the first conversation: its prompt and output, and more; reuses output pages too.
  ps.push_back(concat(concat(ps[0], ref[0].tokens), {12, 13, 14}));
  ref.push_back(run_in_turn(plain, {ps.back()}, n)[0]);

  Scheduler cached(env().model, nullptr, with);
  const auto got = run_in_turn(cached, ps, n);
  std::vector<std::vector<int32_t>> left;  // what each earlier request left in the cache
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_EQ(got[i].tokens, ref[i].tokens) << "prompt " << i;
    EXPECT_EQ(got[i].tokens, reference(ps[i], n)) << "prompt " << i;
    EXPECT_EQ(got[i].cached_tokens, expected_cached(ps[i], left)) << "prompt " << i;
    EXPECT_EQ(ref[i].cached_tokens, 0);
    ASSERT_EQ(got[i].logprobs.size(), ref[i].logprobs.size());
    const float tol = i + 1 == ps.size() ? output_tolerance : tolerance;
    for (size_t k = 0; k < got[i].logprobs.size(); ++k) {
      const auto &a = got[i].logprobs[k], &b = ref[i].logprobs[k];
      EXPECT_NEAR(a.logprob, b.logprob, tol) << "prompt " << i << " token " << k;
      ASSERT_EQ(a.top.size(), b.top.size());
      for (size_t j = 0; j < a.top.size(); ++j) {
        EXPECT_EQ(a.top[j].first, b.top[j].first) << "prompt " << i << " token " << k;
        EXPECT_NEAR(a.top[j].second, b.top[j].second, tol) << "prompt " << i << " token " << k;
      }
    }
    left.push_back(concat(ps[i], std::vector<int32_t>(ref[i].tokens.begin(), ref[i].tokens.end() - 1)));
  }
  EXPECT_EQ(got[6].cached_tokens, 48) << "the output pages of the first turn were reused";
  const auto& m = cached.metrics();
  EXPECT_EQ(m.prefix_lookups.load(), ps.size());
  EXPECT_EQ(m.prefix_hits.load(), ps.size() - 1);
  uint64_t sum = 0;
  for (const auto& g : got) sum += uint64_t(g.cached_tokens);
  EXPECT_EQ(m.cached_prompt_tokens.load(), sum);
  EXPECT_EQ(plain.stats().pages_cached, 0);
  EXPECT_EQ(plain.metrics().prefix_lookups.load(), 0u);
  expect_no_leak(cached);
  expect_no_leak(plain);
  EXPECT_EQ(plain.stats().pages_free, plain.stats().pages_total);
}

// Prefill chunks of one page: both runs compute every prompt page in a chunk of its own, so the same
// floating-point operations run in the same order and the logprobs must agree bit for bit; a reused page holding
// anything but what a fresh prefill writes would show. The last prompt reuses pages of the first one's output,
// whose latents decode steps wrote one token at a time, while the run without the cache prefills them as a chunk:
// the same values up to the order of F32 sums (see below).
TEST(SchedulerPrefixCache, SameTokensAndBitIdenticalLogprobsWithPageAlignedChunks) {
  same_as_without(int32_t(kPage), 0.0f, 1e-5f);
}

// Chunks of 12 tokens: a reused prefix ends mid-chunk, so the two runs split the rest of the prompt differently,
// and a different split changes the order of the F32 sums in the attention over the chunk (softmax over a chunk's
// keys, then merged), which moves logprobs in their last bits: relative 1e-6 (a few ulps, compounded over the
// three layers) of logprobs of magnitude < 10; measured up to 2e-6 here. 1e-5 absolute allows for that, and is
// far below what wrong latents change (they change the greedy tokens of this model).
TEST(SchedulerPrefixCache, SameTokensAndLogprobsWithChunksStraddlingPages) { same_as_without(12, 1e-5f, 1e-5f); }

TEST(SchedulerPrefixCache, SequencesSharingAPrefixAtOnce) {
  const auto base = random_tokens(50, 3);
  Scheduler sched(env().model, nullptr, options(true));
  const int32_t n = 6;
  run_in_turn(sched, {base}, n);  // warms the cache with 3 pages of base
  std::vector<std::vector<int32_t>> ps;
  for (int i = 0; i < 4; ++i) ps.push_back(concat(base, random_tokens(size_t(5 + 9 * i), uint32_t(10 + i))));
  const auto fresh = random_tokens(40, 20);
  ps.push_back(fresh);  // two new identical prompts at once: both prefill, one indexes
  ps.push_back(fresh);
  auto sink = std::make_shared<EventSink>();
  for (size_t i = 0; i < ps.size(); ++i) {
    GenerationRequest r;
    r.prompt = ps[i];
    r.max_tokens = n;
    r.ignore_eos = true;
    sched.submit(r, sink, int32_t(i));
  }
  const auto got = collect(*sink, ps.size());
  for (size_t i = 0; i < ps.size(); ++i) EXPECT_EQ(got[i].tokens, reference(ps[i], n)) << "prompt " << i;
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(got[i].cached_tokens, 48) << "prompt " << i;
  EXPECT_EQ(got[4].cached_tokens, 0);
  EXPECT_EQ(got[5].cached_tokens, 0);
  const auto again = run_in_turn(sched, {fresh}, n);
  EXPECT_EQ(again[0].cached_tokens, 32);
  EXPECT_EQ(again[0].tokens, got[4].tokens);
  expect_no_leak(sched);
}

TEST(SchedulerPrefixCache, EvictsUnderPressureInsteadOfWaiting) {
  // Six pages. a and b leave 2 indexed pages each; c needs 5: admission evicts 3 of the 4 (held by no one).
  Scheduler sched(env().model, nullptr, options(true, 6 * kPage));
  const auto a = random_tokens(40, 4), b = random_tokens(40, 5), c = random_tokens(70, 6);
  const int32_t n = 8;
  const auto got = run_in_turn(sched, {a, b, c, c}, n);
  EXPECT_EQ(got[0].tokens, reference(a, n));
  EXPECT_EQ(got[1].tokens, reference(b, n));
  EXPECT_EQ(got[2].tokens, reference(c, n));
  EXPECT_EQ(got[3].tokens, got[2].tokens);
  EXPECT_EQ(got[2].cached_tokens, 0);
  EXPECT_EQ(got[3].cached_tokens, 64) << "c's 4 whole prompt pages survive until its repeat";
  EXPECT_EQ(sched.stats().pages_total, 6);
  EXPECT_EQ(sched.metrics().prefix_evicted_pages.load(), 3u);
  expect_no_leak(sched);
  // Without the cache the same requests fit too (the admission accounting is unchanged).
  Scheduler plain(env().model, nullptr, options(false, 6 * kPage));
  EXPECT_EQ(run_in_turn(plain, {c}, n)[0].tokens, got[2].tokens);
}

TEST(SchedulerPrefixCache, CancelledRequestsLeaveWholePagesAndNoReferences) {
  Scheduler sched(env().model, nullptr, options(true));
  const auto l = random_tokens(100, 7), m = random_tokens(200, 8);
  auto sink = std::make_shared<EventSink>();
  GenerationRequest r;
  r.prompt = l;
  r.max_tokens = 500;
  r.ignore_eos = true;
  auto hl = sched.submit(r, sink, 0);
  r.prompt = m;
  auto hm = sched.submit(r, sink, 1);
  // Cancel l once decoding, m (sharing the prefill budget) part-way through its prompt.
  size_t got = 0;
  while (got < 3)
    for (auto& e : sink->pop(std::chrono::milliseconds(100))) got += e.index == 0 ? e.tokens.size() : 0;
  hl->cancel();
  hm->cancel();
  int finished = 0;
  for (int i = 0; i < 100 && finished < 2; ++i)
    for (auto& e : sink->pop(std::chrono::milliseconds(100)))
      if (e.finish != FinishReason::none) {
        EXPECT_EQ(e.finish, FinishReason::cancelled);
        ++finished;
      }
  EXPECT_EQ(finished, 2);
  expect_no_leak(sched);
  // What they left is whole: l's prompt pages are reused and give the same tokens.
  const int32_t n = 6;
  const auto again = run_in_turn(sched, {l, m}, n);
  EXPECT_EQ(again[0].cached_tokens, 96);
  EXPECT_EQ(again[0].tokens, reference(l, n));
  EXPECT_EQ(again[1].tokens, reference(m, n));
  EXPECT_LE(again[1].cached_tokens, 192);
  expect_no_leak(sched);
}

// Many requests at once over a small cache: prompts drawn from three shared beginnings (cut at random lengths,
// with random tails), some cancelled as soon as they are submitted, admissions waiting for pages and evicting
// cached ones. Every request that was not cancelled gives the Generator's tokens; no reference is left behind.
TEST(SchedulerPrefixCache, ManyRequestsSharingEvictingAndCancelling) {
  SchedulerOptions o = options(true, 12 * kPage);
  o.max_batch = 4;
  Scheduler sched(env().model, nullptr, o);
  std::mt19937 rng(11);
  const std::vector<std::vector<int32_t>> bases = {random_tokens(48, 21), random_tokens(48, 22), random_tokens(48, 23)};
  for (int round = 0; round < 2; ++round) {
    const size_t count = 10;
    std::vector<std::vector<int32_t>> ps;
    std::vector<int32_t> max_tokens;
    std::vector<std::shared_ptr<RequestHandle>> handles;
    auto sink = std::make_shared<EventSink>();
    for (size_t i = 0; i < count; ++i) {
      const auto& b = bases[rng() % bases.size()];
      auto p = std::vector<int32_t>(b.begin(), b.begin() + std::ptrdiff_t(17 + rng() % 32));
      p = concat(p, random_tokens(rng() % 9, uint32_t(100 + 10 * round + i)));
      ps.push_back(p);
      max_tokens.push_back(int32_t(4 + rng() % 7));
      GenerationRequest r;
      r.prompt = p;
      r.max_tokens = max_tokens.back();
      r.ignore_eos = true;
      handles.push_back(sched.submit(r, sink, int32_t(i)));
      if (i % 4 == 3) handles.back()->cancel();
    }
    const auto got = collect(*sink, count);
    for (size_t i = 0; i < count; ++i) {
      if (i % 4 == 3) {
        EXPECT_EQ(got[i].finish, FinishReason::cancelled) << "round " << round << " request " << i;
        continue;
      }
      EXPECT_EQ(got[i].tokens, reference(ps[i], max_tokens[i])) << "round " << round << " request " << i;
      EXPECT_LE(got[i].cached_tokens, (int64_t(ps[i].size()) - 1) / kPage * kPage);
    }
    expect_no_leak(sched);
  }
  EXPECT_GT(sched.metrics().prefix_hits.load(), 0u);
  EXPECT_GT(sched.metrics().prefix_evicted_pages.load(), 0u);
}

}  // namespace
}  // namespace moe
