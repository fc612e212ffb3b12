// MLA, absorbed form, step 2: multi-query attention in latent space over the paged cache (a W = r + dr wide
// key, the first r columns as value), causal:
//   s_j = (qf[:r] . c_j[:r] + qf[r:] . c_j[r:]) * scale,  j = 0 .. pos
//   o_lat = sum_j softmax(s)_j c_j[:r],  lse = max_j s_j + log sum_j exp(s_j - max)
// Work is split over (token, head) pairs.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/weight_rows.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace moe::cpu {

void mla_latent_attention(ThreadPool& pool, const TensorView& qf, const TensorView& cache, float scale, const BatchPlan& plan,
                          const TensorView& o_lat, const TensorView& lse) {
  const int64_t T = qf.rows(), H = qf.shape[1], W = qf.shape[2], r = o_lat.shape[o_lat.shape.rank - 1], dr = W - r;
  MOE_CHECK(cache.shape[cache.shape.rank - 1] == W, "mla_latent_attention: cache rows are {} wide, qf rows {}",
            cache.shape[cache.shape.rank - 1], W);
  MOE_CHECK(o_lat.numel() == T * H * r && (!lse.data || lse.numel() == T * H),
            "mla_latent_attention: o_lat {} / lse {} for qf {}", o_lat.shape.str(), lse.shape.str(), qf.shape.str());
  MOE_CHECK(plan.num_tokens() == T, "mla_latent_attention: {} tokens for a plan of {}", T, plan.num_tokens());
  const int64_t page_size = plan.page_size;
  int32_t max_len = 0;
  for (int32_t len : plan.seq_lens) max_len = std::max(max_len, len);
  for (int32_t pos : plan.positions)
    MOE_CHECK(pos >= 0 && pos < max_len, "mla_latent_attention: position {} past the longest sequence", pos);

  pool.parallel_for(T * H, [&](int64_t begin, int64_t end, int) {
    std::vector<float> scores(static_cast<size_t>(max_len));
    for (int64_t th = begin; th < end; ++th) {
      const int64_t t = th / H;
      const float* qh = qf.as<const float>() + th * W;
      const int32_t seq = plan.token_seq[size_t(t)], pos = plan.positions[size_t(t)];
      const int32_t* pages = plan.block_table.data() + int64_t(seq) * plan.max_pages;
      auto row = [&](int32_t j) {
        return cache.as<const float>() + (int64_t(pages[j / page_size]) * page_size + j % page_size) * W;
      };
      float max_score = -INFINITY;
      for (int32_t j = 0; j <= pos; ++j) {
        const float* kj = row(j);
        const float s = (dot_f32(qh, kj, r) + dot_f32(qh + r, kj + r, dr)) * scale;
        scores[size_t(j)] = s;
        max_score = std::max(max_score, s);
      }
      double denom = 0.0;
      for (int32_t j = 0; j <= pos; ++j) {
        scores[size_t(j)] = std::exp(scores[size_t(j)] - max_score);
        denom += scores[size_t(j)];
      }
      float* o = o_lat.as<float>() + th * r;
      std::fill(o, o + r, 0.0f);
      for (int32_t j = 0; j <= pos; ++j) axpy_f32(float(scores[size_t(j)] / denom), row(j), o, r);
      if (lse.data) lse.as<float>()[th] = float(double(max_score) + std::log(denom));
    }
  });
}

}  // namespace moe::cpu
