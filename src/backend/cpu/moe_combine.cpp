// Routed experts, step 3: out = plus + each assignment's expert output times its routing weight, added in
// sorted order (ascending expert, then ascending assignment), so a token's k outputs arrive in expert order.
// Rows past offsets[E] (ids -1: no expert, weight 0) were never computed and are skipped.
#include <cstring>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/weight_rows.h"
#include "core/error.h"

namespace moe::cpu {

void moe_combine(const TensorView& y, const MoeDispatch& d, const TensorView& expert_weights, const TensorView& plus,
                 const TensorView& out) {
  const int64_t T = d.tokens, K = d.top_k, M = d.num_rows(), D = out.row_size();
  MOE_CHECK(out.rows() == T && y.rows() == M && y.row_size() == D, "moe_combine: y {} and out {} for {} x {}",
            y.shape.str(), out.shape.str(), T, K);
  MOE_CHECK(expert_weights.numel() == M, "moe_combine: expert weights {} for {} x {}", expert_weights.shape.str(),
            T, K);
  if (plus.data) {
    MOE_CHECK(plus.numel() == out.numel(), "moe_combine: plus is {} for an output of {}", plus.shape.str(),
              out.shape.str());
    std::memmove(out.data, plus.data, out.nbytes());
  } else {
    std::memset(out.data, 0, out.nbytes());
  }
  const int32_t* perm = d.perm.as<const int32_t>();
  const float* w = expert_weights.as<const float>();
  const int64_t computed = d.offsets.as<const int32_t>()[d.num_experts()];
  for (int64_t i = 0; i < computed; ++i) {
    const int64_t a = perm[i];
    axpy_f32(w[a], y.as<const float>() + i * D, out.as<float>() + (a / K) * D, D);
  }
}

}  // namespace moe::cpu
