// MLA attention in its absorbed form over the paged latent cache (multi-query with a 576-wide key for V3):
//   q_lat[h] = W_UK[h]^T q_nope[h]                       (r)
//   score_j  = (q_lat[h] . c_j + q_rope[h] . k_rope_j) * scale,   j = 0 .. pos (causal)
//   o_lat[h] = sum_j softmax(score)_j c_j                (r)
//   out[h]   = W_UV[h] o_lat[h]                          (dv)
// Work is split over heads. With many tokens each head's W_UK and W_UV are dequantised once per call; with a
// few (decode) their rows are streamed straight from the weight, so each byte is read once per step.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/weight_rows.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace moe::cpu {

void mla_attention(const TensorView& q, const Weight& kv_b, const TensorView& cache, int64_t dn, int64_t dv,
                   float scale, const BatchPlan& plan, const TensorView& out) {
  const int64_t T = q.rows(), H = q.shape[1], dh = q.shape[2], dr = dh - dn;
  const int64_t width = cache.shape[cache.shape.rank - 1], r = width - dr;
  MOE_CHECK(kv_b.rows() == H * (dn + dv) && kv_b.cols() == r, "mla_attention: kv_b_proj is {} but expected [{}, {}]",
            kv_b.w.shape.str(), H * (dn + dv), r);
  MOE_CHECK(out.numel() == T * H * dv, "mla_attention: out has the wrong size");
  const int64_t page_size = plan.page_size;
  int32_t max_len = 0;
  for (int32_t len : plan.seq_lens) max_len = std::max(max_len, len);

  ThreadPool::global().parallel_for(H, [&](int64_t h_begin, int64_t h_end, int) {
    const bool streaming = T <= 4;
    std::vector<float> w_uk(streaming ? 0 : size_t(dn * r)), w_uv(streaming ? 0 : size_t(dv * r));
    std::vector<float> q_lat(static_cast<size_t>(r)), o_lat(static_cast<size_t>(r));
    std::vector<float> scores(static_cast<size_t>(max_len));
    for (int64_t h = h_begin; h < h_end; ++h) {
      if (!streaming) {
        for (int64_t n = 0; n < dn; ++n) dequant_row(kv_b, h * (dn + dv) + n, 0, r, w_uk.data() + n * r);
        for (int64_t v = 0; v < dv; ++v) dequant_row(kv_b, h * (dn + dv) + dn + v, 0, r, w_uv.data() + v * r);
      }
      for (int64_t t = 0; t < T; ++t) {
        const float* qh = q.as<const float>() + (t * H + h) * dh;
        std::fill(q_lat.begin(), q_lat.end(), 0.0f);
        for (int64_t n = 0; n < dn; ++n) {
          if (streaming) axpy_row(qh[n], kv_b, h * (dn + dv) + n, q_lat.data());
          else axpy_f32(qh[n], w_uk.data() + n * r, q_lat.data(), r);
        }
        const int32_t seq = plan.token_seq[size_t(t)], pos = plan.positions[size_t(t)];
        const int32_t* pages = plan.block_table.data() + int64_t(seq) * plan.max_pages;
        float max_score = -INFINITY;
        for (int32_t j = 0; j <= pos; ++j) {
          const float* kj = cache.as<const float>() + (int64_t(pages[j / page_size]) * page_size + j % page_size) * width;
          const float s = (dot_f32(q_lat.data(), kj, r) + dot_f32(qh + dn, kj + r, dr)) * scale;
          scores[size_t(j)] = s;
          max_score = std::max(max_score, s);
        }
        double denom = 0.0;
        for (int32_t j = 0; j <= pos; ++j) {
          scores[size_t(j)] = std::exp(scores[size_t(j)] - max_score);
          denom += scores[size_t(j)];
        }
        std::fill(o_lat.begin(), o_lat.end(), 0.0f);
        for (int32_t j = 0; j <= pos; ++j) {
          const float* kj = cache.as<const float>() + (int64_t(pages[j / page_size]) * page_size + j % page_size) * width;
          axpy_f32(float(scores[size_t(j)] / denom), kj, o_lat.data(), r);
        }
        float* oh = out.as<float>() + (t * H + h) * dv;
        for (int64_t v = 0; v < dv; ++v)
          oh[v] = streaming ? dot_row(o_lat.data(), kv_b, h * (dn + dv) + dn + v) : dot_f32(w_uv.data() + v * r, o_lat.data(), r);
      }
    }
  });
}

}  // namespace moe::cpu
