#pragma once
// `moe bench --speculative N`: decode speed through the serving Scheduler (continuous batching, sampling on
// the host, MTP speculative decoding when N > 0), so speculation's gain is measured as a server sees it.
#include <cstdint>
#include <string>
#include <vector>

#include "cli/common.h"

namespace moe::cli {

struct SchedulerBenchArgs {
  std::string model;
  BackendArgs backend;
  int32_t prompt_tokens = 128, gen_tokens = 32;
  uint64_t seed = 1;
  std::vector<int32_t> batches;  // concurrent requests per measurement
  int32_t speculative = 0;       // MTP draft tokens per step; 0: plain decoding
  bool print_tokens = false;     // print every request's tokens (comparing runs with and without speculation)
  bool fused_speculation = true;  // SchedulerOptions::fused_speculation (off: the host-decided path, for A/B)
};

// Per batch size B: B requests of random prompts, greedy, ignore_eos, max_tokens = gen_tokens, submitted at
// once; decode tokens/s counts the tokens after each request's first over the time from the last first token
// to the last token. Prints the speculation counters (drafted, accepted, tokens per verification).
void run_scheduler_bench(const SchedulerBenchArgs& a);

}  // namespace moe::cli
