#pragma once
// Tokens routed to each expert of each layer, counted by the model as it runs (DeepseekV3::Options::load) and read
// by /metrics (moe_expert_tokens_total{layer,expert}) and by EPLB (the counts since its last rebalance).
// Thread-safe: the scheduler's thread adds, the server's threads read.
#include <cstdint>
#include <mutex>
#include <vector>

namespace moe {

class ExpertLoadCounter {
 public:
  // `moe_layers[i]`: whether layer i (the MTP layer last, if any) has routed experts.
  ExpertLoadCounter(std::vector<bool> moe_layers, int32_t num_experts);

  // One step's routing of layer `layer`: ids [n] (every (token, slot) assignment), each in 0 .. E-1.
  void add(int64_t layer, const int32_t* ids, int64_t n);

  size_t layers() const { return moe_layers_.size(); }
  bool is_moe(size_t layer) const { return moe_layers_[layer]; }
  int32_t num_experts() const { return num_experts_; }
  // Totals since construction, [layers][E] (dense layers: all 0).
  std::vector<std::vector<uint64_t>> totals() const;
  // Counts since the previous call (or construction), [layers][E]; restarts the window.
  std::vector<std::vector<int64_t>> take_window();

 private:
  const std::vector<bool> moe_layers_;
  const int32_t num_experts_;
  mutable std::mutex mu_;
  std::vector<std::vector<uint64_t>> total_;
  std::vector<std::vector<int64_t>> window_;
};

}  // namespace moe
