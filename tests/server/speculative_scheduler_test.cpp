// MTP speculative decoding inside the Scheduler (SchedulerOptions::speculative), against independent references:
// greedy tokens must equal the single-sequence Generator's (verified against HF) and the same scheduler run
// without speculation (logprobs, stop strings, constraints included); sampled tokens must follow the model's
// distribution (a chi-square test against probabilities computed from DeepseekV3::forward directly).
//
// Two models: the tiny fixture (its random MTP module's drafts are almost never right: the rejection path) and
// the MTP check model made by create_random_checkpoint's mtp_check (drafts almost always right: the accept path).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <thread>

#include "backend/backend.h"
#include "engine/generator.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "model/deepseek_v3.h"
#include "model/random_checkpoint.h"
#include "server/scheduler_util.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace moe {
namespace {

using moe::test::collect;
using moe::test::Result;

struct Models {
  std::unique_ptr<Backend> backend = make_backend("cpu");
  std::string check_dir = test::temp_path("mtp-check"), micro_dir = test::temp_path("mtp-check-micro");
  DeepseekV3 fixture{test::kTinyModel, *backend, {.load_mtp = true, .progress = {}}};
  std::unique_ptr<DeepseekV3> check;  // the fixture's shape
  std::unique_ptr<DeepseekV3> micro;  // hidden 64, one layer, the fixture's vocabulary: 20000 requests in seconds
  Tokenizer tokenizer = Tokenizer::load(test::kTinyModel);
  Models() {
    RandomCheckpointOptions o;
    o.config_path = test::kTinyModel + "/config.json";
    o.out_dir = check_dir;
    o.seed = 7;
    o.mtp_check = true;
    create_random_checkpoint(o);
    check = std::make_unique<DeepseekV3>(check_dir, *backend, DeepseekV3::Options{.load_mtp = true, .progress = {}});
    nlohmann::json c = nlohmann::json::parse(std::ifstream(o.config_path));
    for (auto [k, v] : {std::pair{"hidden_size", 64}, {"intermediate_size", 128}, {"moe_intermediate_size", 32},
                        {"num_hidden_layers", 1}, {"num_attention_heads", 2}, {"num_key_value_heads", 2},
                        {"kv_lora_rank", 32}, {"q_lora_rank", 48}, {"qk_rope_head_dim", 16}, {"v_head_dim", 16},
                        {"qk_nope_head_dim", 16}, {"n_routed_experts", 4}, {"num_experts_per_tok", 2},
                        {"n_group", 2}, {"topk_group", 1}})
      c[k] = v;
    std::filesystem::create_directories(micro_dir);
    std::ofstream(micro_dir + "/shape.json") << c.dump();
    o.config_path = micro_dir + "/shape.json";
    o.out_dir = micro_dir + "/model";
    create_random_checkpoint(o);
    micro = std::make_unique<DeepseekV3>(o.out_dir, *backend, DeepseekV3::Options{.load_mtp = true, .progress = {}});
  }
  ~Models() {
    std::filesystem::remove_all(check_dir);
    std::filesystem::remove_all(micro_dir);
  }
};
Models& models() {
  static Models m;
  return m;
}

std::vector<std::vector<int32_t>> prompts() {
  std::vector<int32_t> long_prompt;
  for (int32_t i = 0; i < 45; ++i) long_prompt.push_back(300 + 7 * i);
  return {{311, 811, 1336, 101, 151, 1684, 1100}, {5, 6, 7}, long_prompt, {77}};
}

std::vector<int32_t> reference(DeepseekV3& model, const std::vector<int32_t>& prompt, int32_t n) {
  Generator gen(model, int64_t(prompt.size()) + n + 1);
  GenerateOptions o;
  o.max_new_tokens = n;
  return gen.generate(prompt, o);
}

// Submits one greedy request per prompt (ignore_eos; request i gets max_tokens[i], or every request
// max_tokens[0] when it holds one value), `edit` adjusting each before it goes, and collects their results in
// prompt order.
std::vector<Result> run_requests(Scheduler& sched, const std::vector<std::vector<int32_t>>& ps,
                                 const std::vector<int32_t>& max_tokens,
                                 const std::function<void(GenerationRequest&)>& edit = {}) {
  auto sink = std::make_shared<EventSink>();
  for (size_t i = 0; i < ps.size(); ++i) {
    GenerationRequest r;
    r.prompt = ps[i];
    r.max_tokens = max_tokens[max_tokens.size() == 1 ? 0 : i];
    r.ignore_eos = true;
    if (edit) edit(r);
    sched.submit(r, sink, int32_t(i));
  }
  return collect(*sink, ps.size());
}

SchedulerOptions options(int32_t speculative) {
  SchedulerOptions o;
  o.cache_tokens = 2048;
  o.page_size = 16;
  o.max_batch = 8;
  o.max_step_tokens = 8;  // chunked prefill of the longer prompts alongside running decodes
  o.speculative = speculative;
  return o;
}

void wait_idle(Scheduler& s) {
  for (int i = 0; i < 200 && (s.stats().pages_used || s.stats().running); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

// Concurrent greedy requests of different lengths, max_tokens landing anywhere in a draft: tokens equal the
// Generator's, logprobs equal the non-speculative scheduler's.
void check_greedy(DeepseekV3& model, int32_t speculative, double* acceptance = nullptr) {
  const auto ps = prompts();
  const std::vector<int32_t> max_tokens = {13, 1, 9, 2};
  std::vector<Result> base, spec;
  for (int32_t n : {0, speculative}) {
    Scheduler sched(model, nullptr, options(n));
    (n ? spec : base) = run_requests(sched, ps, max_tokens, [](GenerationRequest& r) { r.top_logprobs = 3; });
    wait_idle(sched);
    EXPECT_EQ(sched.stats().pages_used, 0);
    if (n && acceptance) {
      const auto& m = sched.metrics();
      ASSERT_GT(m.spec_drafted.load(), 0u);
      *acceptance = double(m.spec_accepted) / double(m.spec_drafted);
    }
  }
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_EQ(spec[i].tokens, reference(model, ps[i], max_tokens[i])) << "prompt " << i;
    EXPECT_EQ(spec[i].finish, FinishReason::length);
    ASSERT_EQ(spec[i].logprobs.size(), base[i].logprobs.size());
    for (size_t k = 0; k < spec[i].logprobs.size(); ++k) {
      // The same rows of the same model, batched differently: equal up to float reassociation.
      EXPECT_NEAR(spec[i].logprobs[k].logprob, base[i].logprobs[k].logprob, 1e-3) << i << " " << k;
      ASSERT_EQ(spec[i].logprobs[k].top.size(), 3u);
    }
  }
}

TEST(SpeculativeScheduler, GreedyIdenticalOnTheFixture) {
  double acceptance = -1;
  check_greedy(models().fixture, 1, &acceptance);
  std::printf("fixture (random MTP module): acceptance %.3f\n", acceptance);
  check_greedy(models().fixture, 3);
}

TEST(SpeculativeScheduler, GreedyIdenticalOnTheCheckModelAndDraftsAccepted) {
  for (int32_t n : {1, 2}) {
    double acceptance = -1;
    check_greedy(*models().check, n, &acceptance);
    std::printf("MTP check model, %d drafts: acceptance %.3f\n", n, acceptance);
    // The check model's draft is the main model's greedy token but for the small perturbations the scaled
    // layers add (kMtpCheckScale): near 1.
    EXPECT_GE(acceptance, 0.9) << n << " drafts";
  }
}

TEST(SpeculativeScheduler, BatchOfOneMatchesGenerator) {
  Scheduler sched(*models().check, nullptr, options(1));
  for (const auto& p : prompts()) {
    auto sink = std::make_shared<EventSink>();
    GenerationRequest r;
    r.prompt = p;
    r.max_tokens = 24;
    r.ignore_eos = true;
    sched.submit(r, sink);
    EXPECT_EQ(collect(*sink, 1)[0].tokens, reference(*models().check, p, 24));
  }
  const auto& m = sched.metrics();
  // Each verification yields its kept drafts plus one token: fewer steps than tokens.
  EXPECT_GT(m.spec_accepted.load(), m.spec_verifications.load() / 2);
}

// The fused greedy step (SchedulerOptions::fused_speculation: verification and the next drafts decided from
// device argmaxes inside one step, N - 1 of them chained on the device) against the host-decided path and the
// Generator, with 1, 2 and 3 drafts: the same tokens, the same drafts (hence the same acceptance counts) on
// the fixture (drafts rejected: the MTP cache rows past the last kept position are overwritten later, so a
// wrong draft must not change later drafts) and on the check model (kept). max_tokens ends sequences inside a
// step's drafts.
TEST(SpeculativeScheduler, FusedGreedyStepAsHostDecided) {
  const auto ps = prompts();
  const std::vector<int32_t> max_tokens = {30, 6, 21, 25};
  for (int32_t n : {1, 2, 3}) {
    for (DeepseekV3* model : {&models().fixture, models().check.get()}) {
      std::vector<Result> out[2];
      uint64_t accepted[2] = {}, drafted[2] = {}, fused[2] = {};
      for (int fuse : {0, 1}) {
        SchedulerOptions o = options(n);
        o.fused_speculation = fuse == 1;
        Scheduler sched(*model, nullptr, o);
        out[fuse] = run_requests(sched, ps, max_tokens);
        wait_idle(sched);
        EXPECT_EQ(sched.stats().pages_used, 0);
        accepted[fuse] = sched.metrics().spec_accepted;
        drafted[fuse] = sched.metrics().spec_drafted;
        fused[fuse] = sched.metrics().spec_fused_steps;
      }
      const char* name = model == &models().fixture ? "fixture" : "check";
      EXPECT_EQ(fused[0], 0u);
      EXPECT_GT(fused[1], 3u) << name << ", " << n << " drafts";  // every step once all four decode
      EXPECT_EQ(drafted[1], drafted[0]) << name << ", " << n << " drafts";
      EXPECT_EQ(accepted[1], accepted[0]) << name << ", " << n << " drafts";
      std::printf("%s, %d drafts: %llu fused steps, drafted %llu accepted %llu\n", name, n,
                  (unsigned long long)fused[1], (unsigned long long)drafted[1],
                  (unsigned long long)accepted[1]);
      for (size_t i = 0; i < ps.size(); ++i) {
        EXPECT_EQ(out[1][i].tokens, reference(*model, ps[i], max_tokens[i])) << name << " prompt " << i;
        EXPECT_EQ(out[1][i].tokens, out[0][i].tokens) << name << " prompt " << i;
        EXPECT_EQ(out[1][i].finish, FinishReason::length);
      }
    }
  }
}

// Stop strings and stop tokens cut inside a step's kept drafts: the same text, tokens and finish reason.
TEST(SpeculativeScheduler, StopStringsAndStopTokensAsWithout) {
  DeepseekV3& model = *models().check;
  const Tokenizer& tok = models().tokenizer;
  const std::vector<int32_t> prompt = {311, 811, 1336, 101};
  const auto full = reference(model, prompt, 30);
  std::string text;
  {
    StreamingDecoder d(tok, true);
    for (int32_t t : full) text += d.push(t);
    text += d.flush();
  }
  ASSERT_GT(text.size(), 12u);
  const std::string stop = text.substr(text.size() / 2, 3);
  auto run = [&](int32_t n) {
    Scheduler sched(model, &tok, options(n));
    auto sink = std::make_shared<EventSink>();
    GenerationRequest a;
    a.prompt = prompt;
    a.max_tokens = 30;
    a.ignore_eos = true;
    a.stop = {stop};
    sched.submit(a, sink, 0);
    GenerationRequest b = a;
    b.stop.clear();
    b.stop_token_ids = {full[7]};
    sched.submit(b, sink, 1);
    return collect(*sink, 2);
  };
  const auto base = run(0), spec = run(2);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(spec[i].tokens, base[i].tokens) << i;
    EXPECT_EQ(spec[i].text, base[i].text) << i;
    EXPECT_EQ(spec[i].finish, FinishReason::stop) << i;
    EXPECT_EQ(base[i].finish, FinishReason::stop) << i;
  }
  EXPECT_LT(base[0].tokens.size(), full.size());
  EXPECT_EQ(base[1].tokens.back(), full[7]);
}

// A constraint whose allowed set depends on every token it accepted (ids of residue accepted-count mod 3):
// each drafted token is checked under the state after the tokens before it.
class ModCounter : public TokenConstraint {
 public:
  void mask(std::span<float> logits) override {
    for (size_t i = 0; i < logits.size(); ++i)
      if (int64_t(i) % 3 != n_ % 3) logits[i] = -std::numeric_limits<float>::infinity();
  }
  void accept(int32_t token) override {
    EXPECT_EQ(token % 3, n_ % 3);
    ++n_;
  }
  bool complete() const override { return n_ >= 11; }

 private:
  int64_t n_ = 0;
};

TEST(SpeculativeScheduler, TokenConstraintsAsWithout) {
  for (DeepseekV3* model : {&models().fixture, models().check.get()}) {
    std::vector<Result> out[2];
    for (int32_t n : {0, 2}) {
      Scheduler sched(*model, nullptr, options(n));
      out[n ? 1 : 0] = run_requests(sched, prompts(), {20}, [](GenerationRequest& r) {
        r.constraint = std::make_shared<ModCounter>();
      });
    }
    for (size_t i = 0; i < out[0].size(); ++i) {
      EXPECT_EQ(out[1][i].tokens, out[0][i].tokens) << i;
      EXPECT_EQ(out[1][i].tokens.size(), 11u);
      EXPECT_EQ(out[1][i].finish, FinishReason::stop);
    }
  }
}

// Prefix-cache pages shared with a finished request (and with a concurrent one): the shared pages are read, never
// written (verification writes only past a sequence's own `written`), so both requests keep the greedy output.
TEST(SpeculativeScheduler, SharedPrefixPages) {
  DeepseekV3& model = *models().check;
  SchedulerOptions o = options(2);
  o.max_step_tokens = 64;
  Scheduler sched(model, nullptr, o);
  std::vector<int32_t> prompt = prompts()[2];  // 45 tokens: two whole pages of 16 can be shared
  auto run = [&](const std::vector<std::vector<int32_t>>& ps) { return run_requests(sched, ps, {20}); };
  const auto first = run({prompt});
  std::vector<int32_t> longer = prompt;
  longer.push_back(99);
  const auto second = run({prompt, longer});
  EXPECT_EQ(first[0].tokens, reference(model, prompt, 20));
  EXPECT_EQ(second[0].tokens, first[0].tokens);
  EXPECT_EQ(second[1].tokens, reference(model, longer, 20));
  EXPECT_GE(second[0].cached_tokens, 32);
  EXPECT_GE(second[1].cached_tokens, 32);
  // The shared pages are unchanged: a third request over them decodes the same again.
  EXPECT_EQ(run({prompt})[0].tokens, first[0].tokens);
}

TEST(SpeculativeScheduler, CancelFreesPages) {
  Scheduler sched(*models().check, nullptr, options(2));
  auto sink = std::make_shared<EventSink>();
  GenerationRequest r;
  r.prompt = prompts()[0];
  r.max_tokens = 1000;
  r.ignore_eos = true;
  auto h = sched.submit(r, sink);
  std::vector<int32_t> got;
  while (got.size() < 5)
    for (auto& e : sink->pop(std::chrono::milliseconds(50))) got.insert(got.end(), e.tokens.begin(), e.tokens.end());
  h->cancel();
  Result res = collect(*sink, 1)[0];
  EXPECT_EQ(res.finish, FinishReason::cancelled);
  wait_idle(sched);
  EXPECT_EQ(sched.stats().pages_used, 0);
  got.insert(got.end(), res.tokens.begin(), res.tokens.end());
  const auto ref = reference(*models().check, r.prompt, int32_t(got.size()));
  EXPECT_EQ(got, ref);
}

TEST(SpeculativeScheduler, RefusedWithoutTheMtpModule) {
  auto& e = test::env();  // loaded without its MTP module
  try {
    Scheduler sched(e.model, nullptr, options(1));
    FAIL() << "expected an error";
  } catch (const Error& ex) {
    EXPECT_NE(std::string(ex.what()).find("MTP module"), std::string::npos) << ex.what();
  }
}

// Sampled rows: the first token pair's distribution with speculation (the second token decided by the acceptance
// rule against the MTP draft) must be p(t1) p(t2 | t1), computed here from DeepseekV3::forward. top_k 4 keeps 16
// cells; 20000 requests with distinct fixed seeds; the chi-square bound is the 0.999 quantile of 15 degrees of
// freedom (37.70), so a correct rule fails with probability 1e-3 for a given seed set (fixed: deterministic).
TEST(SpeculativeScheduler, SampledPairsFollowTheModel) {
  DeepseekV3& model = *models().micro;
  // 17 tokens: with pages of 16 every request after the first round reuses the first page (prefix cache) and
  // prefills one token, which keeps the 20000 requests to seconds.
  std::vector<int32_t> prompt;
  for (int32_t i = 0; i < 17; ++i) prompt.push_back(int32_t(11 + 97 * i) % 2048);
  SamplingParams sp;
  sp.temperature = 1.0f;
  sp.top_k = 4;
  // Reference: softmax over the top 4 of the last-position logits.
  auto dist = [&](const std::vector<int32_t>& tokens) {
    LatentCache cache(model.config(), model.backend(), 2, 16, model.cache_layers());
    ForwardOutput out = model.forward({SequenceChunk{tokens, 0, {0, 1}, false}}, cache);
    std::vector<float> row(size_t(model.config().vocab_size));
    model.backend().copy_to_host(out.logits, row.data());
    std::map<int32_t, double> p;
    double total = 0;
    const auto ids = top_ids(row, 4);
    for (int32_t id : ids) total += std::exp(double(row[size_t(id)] - row[size_t(ids[0])]));
    for (int32_t id : ids) p[id] = std::exp(double(row[size_t(id)] - row[size_t(ids[0])])) / total;
    return p;
  };
  std::map<std::pair<int32_t, int32_t>, double> expected;
  for (auto [a, pa] : dist(prompt)) {
    std::vector<int32_t> t = prompt;
    t.push_back(a);
    for (auto [b, pb] : dist(t)) expected[{a, b}] = pa * pb;
  }
  ASSERT_EQ(expected.size(), 16u);
  constexpr int kDraws = 20000;
  SchedulerOptions o = options(1);
  o.max_batch = 256;
  o.max_step_tokens = 1024;
  o.cache_tokens = 256 * 48;
  Scheduler sched(model, nullptr, o);
  auto sink = std::make_shared<EventSink>();
  for (int i = 0; i < kDraws; ++i) {
    GenerationRequest r;
    r.prompt = prompt;
    r.max_tokens = 2;
    r.ignore_eos = true;
    r.sampling = sp;
    r.sampling.seed = uint64_t(i) + 1;
    sched.submit(r, sink, i);
  }
  const auto res = collect(*sink, kDraws);
  std::map<std::pair<int32_t, int32_t>, int> seen;
  for (const auto& r : res) {
    ASSERT_EQ(r.tokens.size(), 2u);
    ++seen[{r.tokens[0], r.tokens[1]}];
  }
  double chi2 = 0;
  for (auto [cell, p] : expected) {
    const double e = p * kDraws;
    ASSERT_GE(e, 5.0) << "a cell too small for the chi-square approximation";
    chi2 += (seen[cell] - e) * (seen[cell] - e) / e;
  }
  for (auto [cell, n] : seen) EXPECT_TRUE(expected.count(cell)) << "a pair outside the top-4 support";
  const auto& m = sched.metrics();
  std::printf("chi-square %.2f (15 dof, bound 37.70); drafts %llu, accepted %llu\n", chi2,
              (unsigned long long)m.spec_drafted.load(), (unsigned long long)m.spec_accepted.load());
  EXPECT_LT(chi2, 37.70);
  // Both branches of the rule ran many times.
  EXPECT_GT(m.spec_accepted.load(), 1000u);
  EXPECT_GT(m.spec_drafted.load() - m.spec_accepted.load(), 1000u);
}

}  // namespace
}  // namespace moe
