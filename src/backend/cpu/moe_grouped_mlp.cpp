// Routed experts, step 2: each expert's SwiGLU MLP over its contiguous block of sorted rows, so each
// expert's weights are read once per call (many rows per matmul in prefill).
#include "backend/cpu/cpu_ops.h"
#include "core/error.h"

namespace moe::cpu {

void moe_grouped_mlp(ThreadPool& pool, const MoeDispatch& d, const ExpertWeights& experts, const TensorView& y) {
  const int64_t E = int64_t(experts.experts.size()), M = d.num_rows();
  MOE_CHECK(d.num_experts() == E, "moe_grouped_mlp: a dispatch over {} experts for {} experts", d.num_experts(),
            E);
  MOE_CHECK(y.rows() == M && y.row_size() == d.rows.view().row_size(), "moe_grouped_mlp: y is {} for rows {}",
            y.shape.str(), d.rows.shape().str());
  const int32_t* off = d.offsets.as<const int32_t>();
  for (int64_t e = 0; e < E; ++e) {
    const int64_t begin = off[e], n = off[e + 1] - off[e];
    if (n == 0) continue;
    swiglu_mlp(pool, d.rows.view().slice_rows(begin, n), experts.experts[size_t(e)], y.slice_rows(begin, n));
  }
}

}  // namespace moe::cpu
