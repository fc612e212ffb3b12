// DeepSeek Sparse Attention, the indexer's scores: per token t and visible position j of its sequence,
//   scores[t, j] = sum_h relu(scale * q[t, h] . k_j) * (weights[t, h] * weight_scale)
// in F32 (as the reference's kernel and HF), -inf past the token's position. Work is split over tokens.
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/weight_rows.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace moe::cpu {

void dsa_index_scores(ThreadPool& pool, const TensorView& q, const TensorView& weights, const TensorView& index_cache,
                      float scale, float weight_scale, const BatchPlan& plan, const TensorView& scores) {
  const int64_t T = q.rows(), Hi = q.shape[1], Di = q.shape[2], L = scores.row_size();
  MOE_CHECK(index_cache.dtype == DType::F32 && index_cache.shape[index_cache.shape.rank - 1] == Di,
            "dsa_index_scores: index cache {} {} for queries of {}", dtype_name(index_cache.dtype),
            index_cache.shape.str(), Di);
  MOE_CHECK(weights.numel() == T * Hi && scores.rows() == T && plan.num_tokens() == T,
            "dsa_index_scores: weights {} / scores {} for q {} and a plan of {}", weights.shape.str(),
            scores.shape.str(), q.shape.str(), plan.num_tokens());
  for (int32_t pos : plan.positions)
    MOE_CHECK(pos >= 0 && pos < L, "dsa_index_scores: position {} past the {} scores of a row", pos, L);
  const int64_t page_size = plan.page_size;

  pool.parallel_for(T, [&](int64_t begin, int64_t end, int) {
    std::vector<float> w(static_cast<size_t>(Hi));
    for (int64_t t = begin; t < end; ++t) {
      const float* qt = q.as<const float>() + t * Hi * Di;
      for (int64_t h = 0; h < Hi; ++h) w[size_t(h)] = weights.as<const float>()[t * Hi + h] * weight_scale;
      const int32_t seq = plan.token_seq[size_t(t)], pos = plan.positions[size_t(t)];
      const int32_t* pages = plan.block_table.data() + int64_t(seq) * plan.max_pages;
      float* out = scores.as<float>() + t * L;
      for (int32_t j = 0; j <= pos; ++j) {
        const float* kj = index_cache.as<const float>() + (int64_t(pages[j / page_size]) * page_size + j % page_size) * Di;
        float s = 0.0f;
        for (int64_t h = 0; h < Hi; ++h) {
          const float d = dot_f32(qt + h * Di, kj, Di) * scale;
          if (d > 0.0f) s += d * w[size_t(h)];
        }
        out[j] = s;
      }
      for (int64_t j = pos + 1; j < L; ++j) out[j] = -INFINITY;
    }
  });
}

}  // namespace moe::cpu
