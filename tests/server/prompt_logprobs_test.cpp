// Prompt logprobs (scoring, completions echo + logprobs, max_tokens 0) against an independent reference: the
// single-sequence forward of the whole prompt in one chunk with every logits row, log-softmaxed here in double.
// The scheduler computes the same rows in chunks over the paged cache (chunked prefill, a cap on scoring rows per
// step, other sequences in the batch), so what may differ is the order of F32 sums, bounded below.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>
#include <limits>
#include <thread>

#include "core/error.h"
#include "engine/scheduler.h"
#include "model/latent_cache.h"
#include "server/scheduler_util.h"

namespace moe {
namespace {
using namespace moe::test;

// 36 tokens: longer than every chunk below, so the prompt is scored over several steps.
const std::vector<int32_t> kPrompt = {1000, 42,  17,  99,  400, 401, 402, 403, 404, 405, 406, 407,
                                      408,  409, 410, 411, 412, 413, 414, 415, 416, 417, 418, 419,
                                      420,  421, 422, 423, 424, 425, 426, 427, 428, 429, 430, 431};

struct Reference {
  std::vector<std::vector<double>> logprobs;  // [position][id]: the distribution of the token after `position`
  double tolerance = 0;
};

// The reference rows and the tolerance of a comparison with the scheduler's F32 log-softmax of its own rows:
// - the scheduler's log-softmax rounds l - lse in F32: |error| <= 2^-24 (|l| + |lse|), plus lse's own rounding,
//   2^-24 |lse|, so 2^-23 (max |l| + |lse|) bounds both;
// - the chunked forward sums attention over the cache's pages in another order than the one-chunk forward: each
//   logit moves by a few F32 roundings of the quantities it is made of, bounded by 64 * 2^-24 * max |l| (a
//   generous count of roundings along the chain: norms, attention, MoE, lm_head); a logprob moves by at most twice
//   the largest logit move (its own logit and the lse).
Reference reference_logprobs(const std::vector<int32_t>& prompt) {
  auto& e = env();
  const int64_t ps = 16, pages = (int64_t(prompt.size()) + ps - 1) / ps;
  LatentCache cache(e.model.config(), e.model.backend(), pages, ps, e.model.cache_layers());
  SequenceChunk c;
  c.tokens = prompt;
  c.start_pos = 0;
  for (int32_t p = 0; p < int32_t(pages); ++p) c.pages.push_back(p);
  c.all_logits = true;
  ForwardOutput out = e.model.forward({c}, cache);
  const int64_t vocab = e.model.config().vocab_size;
  EXPECT_EQ(out.logits.shape()[0], int64_t(prompt.size()));
  std::vector<float> host(size_t(out.logits.shape()[0] * vocab));
  e.model.backend().copy_to_host(out.logits, host.data());
  const int64_t usable = std::min<int64_t>(vocab, e.tokenizer.vocab_size());  // the scheduler masks the rest
  Reference r;
  double worst_l = 0, worst_lse = 0;
  for (size_t p = 0; p < prompt.size(); ++p) {
    const float* row = host.data() + p * size_t(vocab);
    double mx = -std::numeric_limits<double>::infinity(), sum = 0;
    for (int64_t i = 0; i < usable; ++i) mx = std::max(mx, double(row[i]));
    for (int64_t i = 0; i < usable; ++i) sum += std::exp(double(row[i]) - mx);
    const double lse = mx + std::log(sum);
    std::vector<double> lp(size_t(vocab), -std::numeric_limits<double>::infinity());
    for (int64_t i = 0; i < usable; ++i) {
      lp[size_t(i)] = double(row[i]) - lse;
      worst_l = std::max(worst_l, std::abs(double(row[i])));
    }
    worst_lse = std::max(worst_lse, std::abs(lse));
    r.logprobs.push_back(std::move(lp));
  }
  const double u = std::ldexp(1.0, -24);
  r.tolerance = 2 * u * (worst_l + worst_lse) + 2 * 64 * u * worst_l;
  return r;
}

// Checks a request's prompt logprobs: entry i is prompt token i + 1's under row i, with `top` alternatives that
// are the reference's most likely tokens (ties within the tolerance may swap).
void expect_matches(const Result& res, const std::vector<int32_t>& prompt, const Reference& ref, int32_t top) {
  ASSERT_EQ(res.prompt_logprobs.size(), prompt.size() - 1);
  double worst = 0;
  for (size_t i = 0; i + 1 < prompt.size(); ++i) {
    const TokenLogprob& lp = res.prompt_logprobs[i];
    const std::vector<double>& row = ref.logprobs[i];
    worst = std::max(worst, std::abs(lp.logprob - row[size_t(prompt[i + 1])]));
    EXPECT_EQ(lp.token, prompt[i + 1]) << i;
    EXPECT_NEAR(lp.logprob, row[size_t(prompt[i + 1])], ref.tolerance) << "prompt token " << i + 1;
    ASSERT_EQ(lp.top.size(), size_t(top)) << i;
    double best = -std::numeric_limits<double>::infinity();
    for (double v : row) best = std::max(best, v);
    for (size_t k = 0; k < lp.top.size(); ++k) {
      EXPECT_NEAR(lp.top[k].second, row[size_t(lp.top[k].first)], ref.tolerance) << i << " alternative " << k;
      if (k == 0) { EXPECT_NEAR(lp.top[k].second, best, 2 * ref.tolerance) << i; }  // the most likely first
      if (k > 0) { EXPECT_LE(lp.top[k].second, lp.top[k - 1].second) << i; }
    }
  }
  std::cout << "prompt logprobs: worst |scheduler - reference| " << worst << " (tolerance " << ref.tolerance << ")\n";
}

SchedulerOptions small_steps() {
  SchedulerOptions o;
  o.cache_tokens = 512;
  o.page_size = 16;
  o.max_step_tokens = 12;          // the 36-token prompt takes several steps
  o.max_prompt_logprob_rows = 7;   // and a scoring sequence only 7 rows of them a step (chunks straddle pages)
  o.max_batch = 4;
  return o;
}

TEST(PromptLogprobs, ScoringMatchesTheOneChunkForward) {
  const Reference ref = reference_logprobs(kPrompt);
  ASSERT_GT(ref.tolerance, 0);
  ASSERT_LT(ref.tolerance, 1e-3);  // the bound is meaningful: far below the spread of the logprobs
  Scheduler sched(env().model, &env().tokenizer, small_steps());
  auto sink = std::make_shared<EventSink>();
  GenerationRequest r;
  r.prompt = kPrompt;
  r.max_tokens = 0;
  r.prompt_logprobs = 3;
  sched.submit(r, sink, 0);
  // A generating request beside it, so scoring chunks share steps with decodes and another prefill.
  GenerationRequest g;
  g.prompt = {5, 6, 7, 8, 9, 10, 11, 12, 13};
  g.max_tokens = 6;
  g.ignore_eos = true;
  sched.submit(g, sink, 1);
  auto res = collect(*sink, 2);
  EXPECT_EQ(res[0].finish, FinishReason::length);
  EXPECT_TRUE(res[0].tokens.empty());
  EXPECT_EQ(res[0].completion_tokens, 0);
  EXPECT_EQ(res[0].events, 1);  // one event: the prompt's logprobs and the end
  expect_matches(res[0], kPrompt, ref, 3);
  EXPECT_EQ(res[1].tokens, reference(g.prompt, 6));  // the neighbour is undisturbed
  for (int i = 0; i < 100 && sched.stats().pages_used; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(sched.stats().pages_used, 0);
}

TEST(PromptLogprobs, ThenGeneratesTheSameTokensAsWithout) {
  const Reference ref = reference_logprobs(kPrompt);
  Scheduler sched(env().model, &env().tokenizer, small_steps());
  auto sink = std::make_shared<EventSink>();
  GenerationRequest r;
  r.prompt = kPrompt;
  r.max_tokens = 5;
  r.ignore_eos = true;
  r.prompt_logprobs = 0;
  r.top_logprobs = 1;
  sched.submit(r, sink, 0);
  auto res = collect(*sink, 1)[0];
  EXPECT_EQ(res.tokens, reference(kPrompt, 5));
  EXPECT_EQ(res.prompt_logprob_event, 0);  // they come with the first token
  expect_matches(res, kPrompt, ref, 0);
  // The first generated token's logprob is the row of the prompt's last position.
  ASSERT_EQ(res.logprobs.size(), 5u);
  EXPECT_NEAR(res.logprobs[0].logprob, ref.logprobs.back()[size_t(res.tokens[0])], ref.tolerance);
}

TEST(PromptLogprobs, BypassesPrefixReuseButPublishesItsPages) {
  const Reference ref = reference_logprobs(kPrompt);
  Scheduler sched(env().model, &env().tokenizer, small_steps());
  auto sink = std::make_shared<EventSink>();
  // A scoring request on an empty cache indexes its pages...
  GenerationRequest s;
  s.prompt = kPrompt;
  s.max_tokens = 0;
  s.prompt_logprobs = 2;
  sched.submit(s, sink, 0);
  auto first = collect(*sink, 1)[0];
  EXPECT_EQ(first.cached_tokens, 0);
  expect_matches(first, kPrompt, ref, 2);
  // ...which a generating request with the same prompt reuses (two whole pages of 16; the last token is computed).
  GenerationRequest g;
  g.prompt = kPrompt;
  g.max_tokens = 4;
  g.ignore_eos = true;
  sched.submit(g, sink, 0);
  auto reuse = collect(*sink, 1)[0];
  EXPECT_EQ(reuse.cached_tokens, 32);
  EXPECT_EQ(reuse.tokens, reference(kPrompt, 4));
  // A second scoring request with the same prompt computes every position again: nothing reused, same numbers.
  sched.submit(s, sink, 0);
  auto again = collect(*sink, 1)[0];
  EXPECT_EQ(again.cached_tokens, 0);
  expect_matches(again, kPrompt, ref, 2);
}

TEST(PromptLogprobs, EdgeCasesAndValidation) {
  Scheduler sched(env().model, &env().tokenizer, small_steps());
  auto sink = std::make_shared<EventSink>();
  // A one-token prompt has no prompt token with a logprob; max_tokens 0 without logprobs just ends.
  GenerationRequest one;
  one.prompt = {77};
  one.max_tokens = 0;
  one.prompt_logprobs = 2;
  sched.submit(one, sink, 0);
  GenerationRequest plain;
  plain.prompt = kPrompt;
  plain.max_tokens = 0;
  sched.submit(plain, sink, 1);
  auto res = collect(*sink, 2);
  for (const auto& r : res) {
    EXPECT_EQ(r.finish, FinishReason::length);
    EXPECT_TRUE(r.tokens.empty());
    EXPECT_TRUE(r.prompt_logprobs.empty());
    EXPECT_EQ(r.completion_tokens, 0);
  }
  GenerationRequest bad = one;
  bad.max_tokens = -1;
  EXPECT_THROW(sched.submit(bad, sink, 0), Error);
  bad = one;
  bad.prompt_logprobs = 21;
  EXPECT_THROW(sched.submit(bad, sink, 0), Error);
}

}  // namespace
}  // namespace moe
