#include "model/expert_load.h"

#include "core/error.h"

namespace moe {

ExpertLoadCounter::ExpertLoadCounter(std::vector<bool> moe_layers, int32_t num_experts)
    : moe_layers_(std::move(moe_layers)),
      num_experts_(num_experts),
      total_(moe_layers_.size(), std::vector<uint64_t>(size_t(num_experts), 0)),
      window_(moe_layers_.size(), std::vector<int64_t>(size_t(num_experts), 0)) {}

void ExpertLoadCounter::add(int64_t layer, const int32_t* ids, int64_t n) {
  MOE_CHECK(layer >= 0 && size_t(layer) < total_.size(), "expert load: no layer {}", layer);
  std::lock_guard lock(mu_);
  auto& t = total_[size_t(layer)];
  auto& w = window_[size_t(layer)];
  for (int64_t i = 0; i < n; ++i) {
    const int32_t e = ids[i];
    MOE_CHECK(e >= 0 && e < num_experts_, "expert load: expert id {} out of range", e);
    ++t[size_t(e)];
    ++w[size_t(e)];
  }
}

std::vector<std::vector<uint64_t>> ExpertLoadCounter::totals() const {
  std::lock_guard lock(mu_);
  return total_;
}

std::vector<std::vector<int64_t>> ExpertLoadCounter::take_window() {
  std::lock_guard lock(mu_);
  auto out = window_;
  for (auto& l : window_) std::fill(l.begin(), l.end(), 0);
  return out;
}

}  // namespace moe
