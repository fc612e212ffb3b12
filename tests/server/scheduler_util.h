#pragma once
// Helpers of the scheduler tests: the tiny model on the CPU, collecting a sink's events per request, and the
// single-sequence Generator (verified against HF) as the reference for greedy tokens.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "engine/generator.h"
#include "engine/scheduler.h"
#include "model/deepseek_v3.h"
#include "tokenizer/tokenizer.h"

namespace moe::test {

inline const char* kModel = "models/tiny-dsv3";

struct Env {
  std::unique_ptr<Backend> backend = make_backend("cpu");
  DeepseekV3 model{kModel, *backend};
  Tokenizer tokenizer = Tokenizer::load(kModel);
};
inline Env& env() {
  static Env e;
  return e;
}

struct Result {
  std::vector<int32_t> tokens;
  std::string text;
  FinishReason finish = FinishReason::none;
  std::vector<TokenLogprob> logprobs;
  std::vector<TokenLogprob> prompt_logprobs;  // as the events carried them
  int32_t prompt_logprob_event = -1;          // which event (0: the first) carried them; -1: none
  int32_t events = 0, completion_tokens = -1;
  int32_t cached_tokens = -1;  // as the last event reported it
  std::string error;           // the final event's error, if any
};

// Collects every request of `sink` (indices 0..n-1) until each has finished.
inline std::vector<Result> collect(EventSink& sink, size_t n) {
  std::vector<Result> out(n);
  size_t done = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (done < n && std::chrono::steady_clock::now() < deadline) {
    for (auto& e : sink.pop(std::chrono::milliseconds(50))) {
      auto& r = out.at(size_t(e.index));
      EXPECT_EQ(r.finish, FinishReason::none) << "event after the end";
      r.tokens.insert(r.tokens.end(), e.tokens.begin(), e.tokens.end());
      r.text += e.text;
      r.logprobs.insert(r.logprobs.end(), e.logprobs.begin(), e.logprobs.end());
      if (!e.prompt_logprobs.empty()) {
        EXPECT_EQ(r.prompt_logprob_event, -1) << "prompt logprobs sent twice";
        r.prompt_logprob_event = r.events;
        r.prompt_logprobs = e.prompt_logprobs;
      }
      r.events++;
      r.completion_tokens = e.completion_tokens;
      r.cached_tokens = e.cached_tokens;
      if (e.finish != FinishReason::none) {
        r.finish = e.finish;
        r.error = e.error;
        ++done;
      }
    }
  }
  EXPECT_EQ(done, n) << "requests did not finish in time";
  return out;
}

inline std::vector<int32_t> reference(const std::vector<int32_t>& prompt, int32_t n, SamplingParams sp = {}) {
  Generator gen(env().model, int64_t(prompt.size()) + n + 1);
  GenerateOptions o;
  o.max_new_tokens = n;
  o.sampling = sp;
  return gen.generate(prompt, o);
}

}  // namespace moe::test
