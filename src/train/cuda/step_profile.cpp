// StepProfile (step_profile.h).
#include "train/cuda/step_profile.h"

#include "core/error.h"

namespace moe::train::cuda {

namespace {
constexpr const char* kNames[] = {"other (norms, rope, SwiGLU, residuals, copies, embedding)",
                                  "gemm (cuBLAS, with BF16 operand conversion)",
                                  "expert gemm (grouped kernel, with BF16 operand conversion)",
                                  "head gemm (cuBLAS, with operand conversion)",
                                  "attention (score/value GEMMs + softmax)",
                                  "moe dispatch (gather, combine, scatter)",
                                  "router (scores, top-k, balance loss)",
                                  "loss (cross-entropy)",
                                  "optimizer (grad norm, AdamW)",
                                  "host wait (routing sync and sort, scalar reads)",
                                  "gradient all-reduce (data parallelism)"};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == size_t(OpClass::kCount));

void check(cudaError_t e, const char* what) {
  MOE_CHECK(e == cudaSuccess, "cuda train profile: {}: {}", what, cudaGetErrorString(e));
}
}  // namespace

StepProfile::~StepProfile() {
  for (auto& [e, c] : marks_) cudaEventDestroy(e);
  for (cudaEvent_t e : pool_) cudaEventDestroy(e);
}

void StepProfile::set_enabled(bool on) {
  on_ = on;
  if (!on_) {
    for (auto& [e, c] : marks_) pool_.push_back(e);
    marks_.clear();
  }
}

OpClass StepProfile::enter(OpClass c) {
  const OpClass prev = cur_;
  cur_ = c;
  if (!on_ || (c == prev && !marks_.empty())) return prev;
  cudaEvent_t e;
  if (pool_.empty()) {
    check(cudaEventCreate(&e), "cudaEventCreate");
  } else {
    e = pool_.back();
    pool_.pop_back();
  }
  check(cudaEventRecord(e, s_), "cudaEventRecord");
  marks_.emplace_back(e, c);
  return prev;
}

void StepProfile::collect() {
  if (!on_ || marks_.size() < 2) return;
  // The stream was synced: every recorded event has completed.
  for (size_t i = 0; i + 1 < marks_.size(); ++i) {
    float ms = 0;
    check(cudaEventElapsedTime(&ms, marks_[i].first, marks_[i + 1].first), "cudaEventElapsedTime");
    ms_[size_t(marks_[i].second)] += double(ms);
    pool_.push_back(marks_[i].first);
  }
  marks_.erase(marks_.begin(), marks_.end() - 1);
}

void StepProfile::reset() { ms_.fill(0.0); }

std::vector<std::pair<std::string, double>> StepProfile::milliseconds() const {
  std::vector<std::pair<std::string, double>> out;
  for (size_t i = 0; i < ms_.size(); ++i) out.emplace_back(kNames[i], ms_[i]);
  return out;
}

}  // namespace moe::train::cuda
