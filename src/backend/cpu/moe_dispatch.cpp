// Routed experts, step 1: the T*k (token, slot) assignments sorted by expert with a counting sort (stable:
// ascending assignment index within an expert), and each assignment's token row copied into that order. Ids -1
// (no expert: expert parallelism's other ranks) sort last, after offsets[E], where no expert reads them.
#include <cstring>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace moe::cpu {

MoeDispatch moe_dispatch(ThreadPool& pool, const TensorView& x, const TensorView& expert_ids, int32_t num_experts) {
  const int64_t T = x.rows(), D = x.row_size(), K = expert_ids.row_size(), M = T * K, E = num_experts;
  MOE_CHECK(expert_ids.dtype == DType::I32 && expert_ids.rows() == T,
            "moe_dispatch: expert ids {} for {} tokens", expert_ids.shape.str(), T);
  MOE_CHECK(x.dtype == DType::F32, "moe_dispatch: the CPU backend's activations are F32");
  MoeDispatch d;
  d.tokens = T;
  d.top_k = K;
  d.rows = Tensor::host(DType::F32, {M, D});
  d.perm = Tensor::host(DType::I32, {M});
  d.offsets = Tensor::host(DType::I32, {E + 1});
  const int32_t* ids = expert_ids.as<const int32_t>();
  int32_t* off = d.offsets.as<int32_t>();
  for (int64_t a = 0; a < M; ++a) {
    MOE_CHECK(ids[a] >= -1 && ids[a] < E, "moe_dispatch: expert id {} out of range", ids[a]);
    if (ids[a] >= 0) ++off[ids[a] + 1];
  }
  for (int64_t e = 0; e < E; ++e) off[e + 1] += off[e];
  std::vector<int32_t> cursor(off, off + E + 1);  // cursor[E]: the -1 assignments, after every expert's rows
  int32_t* perm = d.perm.as<int32_t>();
  for (int64_t a = 0; a < M; ++a) perm[cursor[ids[a] >= 0 ? size_t(ids[a]) : size_t(E)]++] = int32_t(a);
  const float* src = x.as<const float>();
  float* rows = d.rows.as<float>();
  pool.parallel_for(
      M,
      [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i)
          std::memcpy(rows + i * D, src + (perm[i] / K) * D, size_t(D) * sizeof(float));
      },
      16);
  return d;
}

}  // namespace moe::cpu
