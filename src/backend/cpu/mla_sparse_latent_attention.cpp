// MLA, absorbed form, step 2 for DeepSeek Sparse Attention: mla_latent_attention.cpp's sum over only the cache
// positions the indexer chose for each token (indices [T, K], ascending, -1 padded):
//   s_j = (qf[:r] . c_j[:r] + qf[r:] . c_j[r:]) * scale,  j in indices[t]
//   o_lat = sum_j softmax(s)_j c_j[:r],  lse = max_j s_j + log sum_j exp(s_j - max)
// Same loops as the dense op, so indices 0 .. pos give its result bit for bit. Work is split over (token, head).
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/weight_rows.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace moe::cpu {

void mla_sparse_latent_attention(ThreadPool& pool, const TensorView& qf, const TensorView& cache, float scale,
                                 const BatchPlan& plan, const TensorView& indices, const TensorView& o_lat,
                                 const TensorView& lse) {
  const int64_t T = qf.rows(), H = qf.shape[1], W = qf.shape[2], r = o_lat.shape[o_lat.shape.rank - 1], dr = W - r;
  const int64_t K = indices.row_size();
  MOE_CHECK(cache.shape[cache.shape.rank - 1] == W, "mla_sparse_latent_attention: cache rows are {} wide, qf rows {}",
            cache.shape[cache.shape.rank - 1], W);
  MOE_CHECK(o_lat.numel() == T * H * r && (!lse.data || lse.numel() == T * H),
            "mla_sparse_latent_attention: o_lat {} / lse {} for qf {}", o_lat.shape.str(), lse.shape.str(),
            qf.shape.str());
  MOE_CHECK(plan.num_tokens() == T && indices.dtype == DType::I32 && indices.rows() == T,
            "mla_sparse_latent_attention: indices {} for {} tokens and a plan of {}", indices.shape.str(), T,
            plan.num_tokens());
  // Each token's positions: a non-empty ascending prefix of valid positions, then -1s.
  std::vector<int32_t> counts(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    const int32_t* sel = indices.as<const int32_t>() + t * K;
    const int32_t pos = plan.positions[size_t(t)];
    int32_t n = 0;
    while (n < K && sel[n] >= 0) {
      MOE_CHECK(sel[n] <= pos && (n == 0 || sel[n] > sel[n - 1]),
                "mla_sparse_latent_attention: token {} (position {}) selects position {} out of order or ahead", t,
                pos, sel[n]);
      ++n;
    }
    for (int32_t i = n; i < K; ++i)
      MOE_CHECK(sel[i] == -1, "mla_sparse_latent_attention: token {} has position {} after the padding", t, sel[i]);
    MOE_CHECK(n > 0, "mla_sparse_latent_attention: token {} attends to no position", t);
    counts[size_t(t)] = n;
  }
  const int64_t page_size = plan.page_size;

  pool.parallel_for(T * H, [&](int64_t begin, int64_t end, int) {
    std::vector<float> scores(static_cast<size_t>(K));
    for (int64_t th = begin; th < end; ++th) {
      const int64_t t = th / H;
      const float* qh = qf.as<const float>() + th * W;
      const int32_t* sel = indices.as<const int32_t>() + t * K;
      const int32_t n = counts[size_t(t)], seq = plan.token_seq[size_t(t)];
      const int32_t* pages = plan.block_table.data() + int64_t(seq) * plan.max_pages;
      auto row = [&](int32_t j) {
        return cache.as<const float>() + (int64_t(pages[j / page_size]) * page_size + j % page_size) * W;
      };
      float max_score = -INFINITY;
      for (int32_t i = 0; i < n; ++i) {
        const float* kj = row(sel[i]);
        const float s = (dot_f32(qh, kj, r) + dot_f32(qh + r, kj + r, dr)) * scale;
        scores[size_t(i)] = s;
        max_score = std::max(max_score, s);
      }
      double denom = 0.0;
      for (int32_t i = 0; i < n; ++i) {
        scores[size_t(i)] = std::exp(scores[size_t(i)] - max_score);
        denom += scores[size_t(i)];
      }
      float* o = o_lat.as<float>() + th * r;
      std::fill(o, o + r, 0.0f);
      for (int32_t i = 0; i < n; ++i) axpy_f32(float(scores[size_t(i)] / denom), row(sel[i]), o, r);
      if (lse.data) lse.as<float>()[th] = float(double(max_score) + std::log(denom));
    }
  });
}

}  // namespace moe::cpu
