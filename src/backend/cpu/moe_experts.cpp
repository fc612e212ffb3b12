// Routed experts on the CPU: tokens are grouped by expert so each expert's weights are read once per call
// (many tokens per matmul in prefill), then each expert's output is added back with its routing weight.
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/weight_rows.h"
#include "core/error.h"

namespace moe::cpu {

void moe_experts(const TensorView& x, const ExpertWeights& experts, const TensorView& expert_ids,
                 const TensorView& expert_weights, const TensorView& plus, const TensorView& out) {
  const int64_t T = x.rows(), D = x.row_size(), K = expert_ids.row_size();
  const int64_t E = int64_t(experts.experts.size());
  std::vector<std::vector<int64_t>> assignments(static_cast<size_t>(E));  // flat (t * K + j) per expert
  for (int64_t i = 0; i < T * K; ++i) {
    const int32_t e = expert_ids.as<const int32_t>()[i];
    MOE_CHECK(e >= 0 && e < E, "moe_experts: expert id {} out of range", e);
    assignments[size_t(e)].push_back(i);
  }
  if (plus.data) {
    MOE_CHECK(plus.numel() == out.numel(), "moe_experts: plus is {} for an output of {}", plus.shape.str(),
              out.shape.str());
    std::memmove(out.data, plus.data, out.nbytes());
  } else {
    std::memset(out.data, 0, out.nbytes());
  }
  for (int64_t e = 0; e < E; ++e) {
    const auto& rows = assignments[size_t(e)];
    if (rows.empty()) continue;
    const int64_t n = int64_t(rows.size());
    Tensor xe = Tensor::host(DType::F32, {n, D}), ye = Tensor::host(DType::F32, {n, D});
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(xe.as<float>() + i * D, x.as<const float>() + (rows[size_t(i)] / K) * D, size_t(D) * 4);
    swiglu_mlp(xe, experts.experts[size_t(e)], ye);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t flat = rows[size_t(i)];
      axpy_f32(expert_weights.as<const float>()[flat], ye.as<const float>() + i * D,
               out.as<float>() + (flat / K) * D, D);
    }
  }
}

}  // namespace moe::cpu
