#pragma once
// Device time of the training step by op class (`moe train-bench --profile`): events recorded on the step's
// stream where the class changes; after a host sync the gaps between consecutive events are added to the class
// that was running. Gaps where the device idles (the host sorting the routing, the host's own work between
// ops) land in the class that was open, so every host wait is opened as HostWait. Off (the default): enter()
// only keeps the current class, no events.
#include <cuda_runtime.h>

#include <array>
#include <string>
#include <utility>
#include <vector>

namespace moe::train::cuda {

// Gemm: the dense projections (and the routed experts' per-expert loop); ExpertGemm: the routed experts' grouped
// GEMMs; HeadGemm: the output heads' (main and MTP). Each with its BF16 operand conversions. GradReduce: data
// parallelism's gradient all-reduce over the ranks (DeviceStep::all_reduce_gradients).
enum class OpClass {
  Other, Gemm, ExpertGemm, HeadGemm, Attention, MoeDispatch, Router, Loss, Optimizer, HostWait, GradReduce, kCount
};

class StepProfile {
 public:
  explicit StepProfile(cudaStream_t s) : s_(s) {}
  ~StepProfile();
  StepProfile(const StepProfile&) = delete;
  StepProfile& operator=(const StepProfile&) = delete;

  void set_enabled(bool on);
  bool enabled() const { return on_; }
  // Opens class c (returns the class that was open).
  OpClass enter(OpClass c);
  // After a host sync of the stream: adds the finished intervals to their classes.
  void collect();
  void reset();  // zero the sums (the open class and its last event stay)
  // {"gemm", ms}, ... for every class, in enum order.
  std::vector<std::pair<std::string, double>> milliseconds() const;

 private:
  cudaStream_t s_;
  bool on_ = false;
  OpClass cur_ = OpClass::Other;
  std::vector<std::pair<cudaEvent_t, OpClass>> marks_;  // recorded, not yet collected (the first is the open one)
  std::vector<cudaEvent_t> pool_;
  std::array<double, size_t(OpClass::kCount)> ms_{};
};

// Opens a class for a scope and reopens the previous one at its end.
class ProfScope {
 public:
  ProfScope(StepProfile& p, OpClass c) : p_(p), prev_(p.enter(c)) {}
  ~ProfScope() { p_.enter(prev_); }
  ProfScope(const ProfScope&) = delete;
  ProfScope& operator=(const ProfScope&) = delete;

 private:
  StepProfile& p_;
  OpClass prev_;
};

}  // namespace moe::train::cuda
