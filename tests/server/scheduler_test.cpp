// Scheduler tests against independent expectations: the single-sequence Generator (verified against HF) gives the
// reference tokens; page accounting is read back through stats().
#include <gtest/gtest.h>

#include <thread>

#include "backend/backend.h"
#include "core/error.h"
#include "engine/generator.h"
#include "engine/scheduler.h"
#include "model/deepseek_v3.h"
#include "server/scheduler_util.h"
#include "tokenizer/tokenizer.h"

namespace moe {
namespace {
using namespace moe::test;

std::vector<std::vector<int32_t>> prompts() {
  return {{311, 811, 1336, 101, 151, 1684, 1100},
          {5, 6, 7},
          {1000, 42, 17, 99, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417,
           418, 419, 420, 421, 422, 423, 424, 425, 426, 427, 428, 429, 430, 431},
          {77}};
}

TEST(Scheduler, BatchedGreedyMatchesGenerator) {
  SchedulerOptions o;
  o.cache_tokens = 1024;
  o.page_size = 16;
  o.max_step_tokens = 8;  // forces chunked prefill of the longer prompts alongside running decodes
  o.max_batch = 4;
  Scheduler sched(env().model, nullptr, o);
  auto sink = std::make_shared<EventSink>();
  const auto ps = prompts();
  for (size_t i = 0; i < ps.size(); ++i) {
    GenerationRequest r;
    r.prompt = ps[i];
    r.max_tokens = 12;
    r.ignore_eos = true;
    sched.submit(r, sink, int32_t(i));
  }
  auto results = collect(*sink, ps.size());
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_EQ(results[i].tokens, reference(ps[i], 12)) << "prompt " << i;
    EXPECT_EQ(results[i].finish, FinishReason::length);
  }
  // Finished requests gave their pages back.
  for (int i = 0; i < 100 && sched.stats().pages_used; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(sched.stats().pages_used, 0);
  EXPECT_EQ(sched.stats().running, 0);
}

TEST(Scheduler, AdmissionWaitsWhenCacheIsFull) {
  SchedulerOptions o;
  o.cache_tokens = 32;  // two pages of 16: room for exactly one request of <= 32 tokens at a time
  o.page_size = 16;
  Scheduler sched(env().model, nullptr, o);
  auto sink = std::make_shared<EventSink>();
  const auto ps = prompts();
  std::vector<int> order;
  for (int i = 0; i < 3; ++i) {
    GenerationRequest r;
    r.prompt = ps[size_t(i == 2 ? 3 : i)];
    r.max_tokens = 20;
    r.ignore_eos = true;
    sched.submit(r, sink, i);
  }
  // Right after submission at most one request can hold pages; the others wait in the queue.
  const auto st = sched.stats();
  EXPECT_LE(st.running, 1);
  EXPECT_LE(st.pages_used, 2);
  EXPECT_GE(st.waiting, 1);  // the first request holds both pages for its ~20 decode steps
  auto results = collect(*sink, 3);
  EXPECT_EQ(results[0].tokens, reference(ps[0], 20));
  EXPECT_EQ(results[1].tokens, reference(ps[1], 20));
  EXPECT_EQ(results[2].tokens, reference(ps[3], 20));
  // A request that can never fit is refused instead of waiting forever.
  GenerationRequest big;
  big.prompt = ps[2];
  big.max_tokens = 10;
  EXPECT_THROW(sched.submit(big, sink, 0), Error);
}

TEST(Scheduler, CancelFreesPagesAtOnce) {
  SchedulerOptions o;
  o.cache_tokens = 4096;
  o.page_size = 16;
  Scheduler sched(env().model, nullptr, o);
  auto sink = std::make_shared<EventSink>();
  GenerationRequest r;
  r.prompt = prompts()[0];
  r.max_tokens = 2000;
  r.ignore_eos = true;
  auto h = sched.submit(r, sink, 0);
  // Wait for some tokens, then cancel.
  size_t got = 0;
  while (got < 3)
    for (auto& e : sink->pop(std::chrono::milliseconds(100))) got += e.tokens.size();
  EXPECT_EQ(sched.stats().pages_used, pages_for(7 + 2000, 16));
  h->cancel();
  FinishReason fin = FinishReason::none;
  for (int i = 0; i < 100 && fin == FinishReason::none; ++i)
    for (auto& e : sink->pop(std::chrono::milliseconds(100)))
      if (e.finish != FinishReason::none) fin = e.finish;
  EXPECT_EQ(fin, FinishReason::cancelled);
  EXPECT_EQ(sched.stats().pages_used, 0);
  EXPECT_EQ(sched.metrics().requests_cancelled.load(), 1u);
}

TEST(ShareBudget, EqualSharesWithWhatTheSmallDoNotNeedGivenToTheRest) {
  EXPECT_EQ(share_budget({1000, 4}, 512), (std::vector<int64_t>{508, 4}));
  EXPECT_EQ(share_budget({1000, 1000}, 512), (std::vector<int64_t>{256, 256}));
  EXPECT_EQ(share_budget({1000, 1000, 1000}, 512), (std::vector<int64_t>{170, 171, 171}));
  EXPECT_EQ(share_budget({1000, 300, 100}, 512), (std::vector<int64_t>{206, 206, 100}));
  EXPECT_EQ(share_budget({3, 2}, 512), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(share_budget({10, 10, 10}, 3), (std::vector<int64_t>{1, 1, 1}));
  EXPECT_EQ(share_budget({}, 512), (std::vector<int64_t>{}));
}

// Finding 5 of issue 16: the prefill budget went to the batch in order, so a short request admitted behind a long
// prompt waited for its whole prefill. Shared, the short one is prefilled in its first step and finishes (after
// max_tokens decodes) long before the long prompt's first token.
TEST(Scheduler, LongPromptDoesNotStarveAShortOne) {
  SchedulerOptions o;
  o.cache_tokens = 4096;
  o.page_size = 16;
  o.max_batch = 4;
  o.max_step_tokens = 8;  // the long prompt needs 1,600 / 8 = 200 steps of prefill
  Scheduler sched(env().model, nullptr, o);
  auto long_sink = std::make_shared<EventSink>(), short_sink = std::make_shared<EventSink>();
  GenerationRequest lr;
  for (int i = 0; i < 1600; ++i) lr.prompt.push_back(int32_t(2 + (i * 37) % 2000));
  lr.max_tokens = 4;
  lr.ignore_eos = true;
  sched.submit(lr, long_sink, 0);
  // Submitted after the long one (while it is prefilling): 4 prompt tokens, 2 to generate.
  GenerationRequest sr;
  sr.prompt = {5, 6, 7, 8};
  sr.max_tokens = 2;
  sr.ignore_eos = true;
  const uint64_t steps_before = sched.metrics().steps.load();
  sched.submit(sr, short_sink, 0);
  auto res = collect(*short_sink, 1);
  const uint64_t steps_taken = sched.metrics().steps.load() - steps_before;
  EXPECT_EQ(res[0].finish, FinishReason::length);
  EXPECT_EQ(res[0].tokens, reference(sr.prompt, 2));
  // Bound (scheduler.cpp): 4 tokens get a share of >= (8 - 0 decodes) / 2 = 4 per step: prefilled (and the first
  // token sampled) in one step, the second token in the next. Read a little late, so a few more may have run.
  EXPECT_LE(steps_taken, 20u) << "the short request waited behind the long prompt's prefill";
  // The long prompt was still prefilling: no token of it yet.
  bool long_done = false;
  for (auto& e : long_sink->pop(std::chrono::milliseconds(0))) {
    EXPECT_TRUE(e.tokens.empty());
    long_done |= e.finish != FinishReason::none;
  }
  if (!long_done) { EXPECT_EQ(collect(*long_sink, 1)[0].finish, FinishReason::length); }
}

TEST(Scheduler, SeedIsReproducibleWhateverTheBatch) {
  SchedulerOptions o;
  o.cache_tokens = 1024;
  Scheduler sched(env().model, nullptr, o);
  SamplingParams sp;
  sp.temperature = 1.0f;
  sp.top_p = 0.95f;
  sp.top_k = 50;
  sp.seed = 1234;
  auto run = [&](uint64_t seed, bool with_company) {
    auto sink = std::make_shared<EventSink>();
    GenerationRequest r;
    r.prompt = prompts()[0];
    r.max_tokens = 16;
    r.ignore_eos = true;
    r.sampling = sp;
    r.sampling.seed = seed;
    sched.submit(r, sink, 0);
    size_t n = 1;
    if (with_company) {
      GenerationRequest other = r;
      other.prompt = prompts()[2];
      other.sampling.seed = seed + 1;
      sched.submit(other, sink, 1);
      n = 2;
    }
    return collect(*sink, n)[0].tokens;
  };
  const auto a = run(1234, false), b = run(1234, true), c = run(99, false);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // The Generator's Sampler with the same seed draws the same tokens.
  EXPECT_EQ(a, reference(prompts()[0], 16, sp));
}

TEST(StopMatcher, FindsStopsAcrossFeeds) {
  StopMatcher m({"STOP", "xyz"});
  std::string out = m.feed("hello S");
  out += m.feed("T");
  EXPECT_EQ(out, "hello ");  // "ST" is held back
  out += m.feed("OPtrailing");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(out, "hello ");
  StopMatcher n({"abc"});
  std::string o2 = n.feed("xa");
  o2 += n.feed("bd");  // "ab" then "d": not a stop, released
  o2 += n.flush();
  EXPECT_FALSE(n.stopped());
  EXPECT_EQ(o2, "xabd");
}

TEST(Scheduler, StopStringAcrossTokenBoundaries) {
  SchedulerOptions o;
  o.cache_tokens = 1024;
  Scheduler sched(env().model, &env().tokenizer, o);
  const auto prompt = prompts()[0];
  const auto ref = reference(prompt, 24);
  // Pick a stop string that starts inside token 5's text and ends inside token 7's text.
  const std::string before = env().tokenizer.decode(std::span(ref).first(5), true);
  const std::string upto7 = env().tokenizer.decode(std::span(ref).first(7), true);
  ASSERT_GT(upto7.size(), before.size() + 2);
  const size_t start = before.size() > 0 ? before.size() - 1 : 0;
  const std::string stop = upto7.substr(start, upto7.size() - 1 - start);
  ASSERT_FALSE(stop.empty());
  const std::string full = env().tokenizer.decode(ref, true);
  const std::string expected = full.substr(0, full.find(stop));

  auto sink = std::make_shared<EventSink>();
  GenerationRequest r;
  r.prompt = prompt;
  r.max_tokens = 24;
  r.ignore_eos = true;
  r.stop = {stop};
  sched.submit(r, sink, 0);
  auto res = collect(*sink, 1)[0];
  EXPECT_EQ(res.finish, FinishReason::stop);
  EXPECT_EQ(res.text, expected);
  EXPECT_LE(res.tokens.size(), 7u);

  // Without the stop string the streamed text equals the whole decode.
  GenerationRequest r2 = r;
  r2.stop.clear();
  sched.submit(r2, sink, 0);
  auto res2 = collect(*sink, 1)[0];
  EXPECT_EQ(res2.text, full);
  EXPECT_EQ(res2.tokens, ref);
}

TEST(Scheduler, LogprobsAndValidation) {
  SchedulerOptions o;
  o.cache_tokens = 256;
  o.max_context = 128;
  Scheduler sched(env().model, nullptr, o);
  auto sink = std::make_shared<EventSink>();
  GenerationRequest r;
  r.prompt = prompts()[1];
  r.max_tokens = 4;
  r.ignore_eos = true;
  r.top_logprobs = 3;
  sched.submit(r, sink, 0);
  auto res = collect(*sink, 1)[0];
  ASSERT_EQ(res.logprobs.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(res.logprobs[i].token, res.tokens[i]);
    ASSERT_EQ(res.logprobs[i].top.size(), 3u);
    EXPECT_EQ(res.logprobs[i].top[0].first, res.tokens[i]);  // greedy picks the most likely token
    EXPECT_LE(res.logprobs[i].logprob, 0.0f);
  }
  GenerationRequest bad = r;
  bad.prompt.assign(130, 5);
  EXPECT_THROW(sched.submit(bad, sink, 0), Error);  // longer than the context
  bad = r;
  bad.max_tokens = -1;  // 0 is allowed: scoring (prompt_logprobs_test.cpp)
  EXPECT_THROW(sched.submit(bad, sink, 0), Error);
  bad = r;
  bad.prompt_logprobs = 21;
  EXPECT_THROW(sched.submit(bad, sink, 0), Error);
  bad = r;
  bad.prompt = {5000};
  EXPECT_THROW(sched.submit(bad, sink, 0), Error);  // outside the vocabulary
  bad = r;
  bad.sampling.top_p = 0;
  EXPECT_THROW(sched.submit(bad, sink, 0), Error);
}


// A constraint that allows exactly the tokens of `script`, in order, and is complete after the last one: the
// request's output is the script whatever the model prefers, and it ends with "stop" before max_tokens.
class ScriptConstraint : public TokenConstraint {
 public:
  explicit ScriptConstraint(std::vector<int32_t> script) : script_(std::move(script)) {}
  void mask(std::span<float> logits) override {
    for (size_t i = 0; i < logits.size(); ++i)
      if (int32_t(i) != script_.at(pos_)) logits[i] = -std::numeric_limits<float>::infinity();
  }
  void accept(int32_t token) override { EXPECT_EQ(token, script_.at(pos_++)); }
  bool complete() const override { return pos_ == script_.size(); }

 private:
  std::vector<int32_t> script_;
  size_t pos_ = 0;
};

class NothingAllowed : public TokenConstraint {
 public:
  void mask(std::span<float> logits) override {
    std::fill(logits.begin(), logits.end(), -std::numeric_limits<float>::infinity());
  }
  void accept(int32_t) override { ADD_FAILURE() << "accept after an empty mask"; }
  bool complete() const override { return false; }
};

TEST(Scheduler, ConstraintDecidesTheTokensAndTheEnd) {
  SchedulerOptions o;
  o.cache_tokens = 512;
  Scheduler sched(env().model, nullptr, o);
  auto sink = std::make_shared<EventSink>();
  const auto ps = prompts();
  const std::vector<int32_t> script = {17, 2000, 17, 2};  // the tiny model has 2048 ids
  const auto free_run = reference(ps[0], 4);
  ASSERT_NE(free_run, script) << "pick a script the model would not produce by itself";
  GenerationRequest r;
  r.prompt = ps[0];
  r.max_tokens = 10;
  r.ignore_eos = true;
  r.constraint = std::make_shared<ScriptConstraint>(script);
  sched.submit(r, sink, 0);
  r.constraint = std::make_shared<NothingAllowed>();
  sched.submit(r, sink, 1);
  auto results = collect(*sink, 2);
  EXPECT_EQ(results[0].tokens, script);
  EXPECT_EQ(results[0].finish, FinishReason::stop) << results[0].error;
  EXPECT_TRUE(results[1].tokens.empty());
  EXPECT_EQ(results[1].finish, FinishReason::error);
}

}  // namespace
}  // namespace moe
