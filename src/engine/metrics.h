#pragma once
// Serving metrics kept by the scheduler and read by front ends (the server's /metrics): counters and
// fixed-bucket latency histograms. Thread-safe.
#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

namespace moe {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1) {}
  void observe(double v) {
    std::lock_guard lock(mu_);
    size_t i = 0;
    while (i < bounds_.size() && v > bounds_[i]) ++i;
    ++counts_[i];
    sum_ += v;
    ++count_;
  }
  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // per bound, then +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot snapshot() const {
    std::lock_guard lock(mu_);
    Snapshot s{bounds_, {}, sum_, count_};
    uint64_t c = 0;
    for (uint64_t n : counts_) s.cumulative.push_back(c += n);
    return s;
  }

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t count_ = 0;
};

struct EngineMetrics {
  std::atomic<uint64_t> requests_submitted{0}, requests_finished{0}, requests_cancelled{0}, requests_failed{0};
  std::atomic<uint64_t> prompt_tokens{0}, generated_tokens{0}, steps{0};  // prompt_tokens: cached ones included
  // Prefix cache: admissions that looked up a prompt, those that reused at least one page, prompt tokens reused.
  std::atomic<uint64_t> prefix_lookups{0}, prefix_hits{0}, cached_prompt_tokens{0};
  std::atomic<uint64_t> prefix_evicted_pages{0};  // given up by the prefix cache to make room for admissions
  // EPLB (engine/ep_serving.h): rebalances done, and the mean over MoE layers of max / mean load per rank over the
  // last window, under the placement before it and the one it chose.
  std::atomic<uint64_t> eplb_rebalances{0};
  std::atomic<double> eplb_imbalance_before{1.0}, eplb_imbalance_after{1.0};
  // Speculative decoding: sequence steps that verified drafts, drafts checked, drafts kept. Tokens per such
  // step are (accepted + verifications) / verifications when no request ends mid-draft.
  std::atomic<uint64_t> spec_verifications{0}, spec_drafted{0}, spec_accepted{0};
  // Steps that ran fused (SchedulerOptions::fused_speculation: verification and drafting in one device step).
  std::atomic<uint64_t> spec_fused_steps{0};
  Histogram ttft{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}};           // seconds
  Histogram inter_token{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}};  // seconds
};

}  // namespace moe
