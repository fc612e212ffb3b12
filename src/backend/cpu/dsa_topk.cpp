// DeepSeek Sparse Attention, the selection: per token, the index_topk visible positions of highest index score
// (equal scores: the lower position), or all visible positions while there are no more than index_topk; listed
// in ascending order and padded with -1, so that the sparse attention sums in the dense attention's order.
#include <algorithm>
#include <numeric>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace moe::cpu {

void dsa_topk(ThreadPool& pool, const TensorView& scores, const BatchPlan& plan, const TensorView& indices) {
  const int64_t T = scores.rows(), L = scores.row_size(), K = indices.row_size();
  MOE_CHECK(indices.dtype == DType::I32 && indices.rows() == T && plan.num_tokens() == T,
            "dsa_topk: indices {} for scores {} and a plan of {}", indices.shape.str(), scores.shape.str(),
            plan.num_tokens());
  for (int32_t pos : plan.positions) MOE_CHECK(pos >= 0 && pos < L, "dsa_topk: position {} past {} scores", pos, L);

  pool.parallel_for(T, [&](int64_t begin, int64_t end, int) {
    std::vector<int32_t> order;
    for (int64_t t = begin; t < end; ++t) {
      const float* s = scores.as<const float>() + t * L;
      const int32_t visible = plan.positions[size_t(t)] + 1;
      int32_t* out = indices.as<int32_t>() + t * K;
      if (visible <= K) {
        std::iota(out, out + visible, 0);
        std::fill(out + visible, out + K, -1);
        continue;
      }
      order.resize(size_t(visible));
      std::iota(order.begin(), order.end(), 0);
      std::nth_element(order.begin(), order.begin() + K, order.end(),
                       [s](int32_t a, int32_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
      std::sort(order.begin(), order.begin() + K);
      std::copy(order.begin(), order.begin() + K, out);
    }
  });
}

}  // namespace moe::cpu
