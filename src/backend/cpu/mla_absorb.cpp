// MLA, absorbed form, step 1: the query in latent space, qf[t, h] = (W_UK[h]^T q_nope[t, h], q_rope[t, h]).
// Work is split over heads. With many tokens each head's W_UK is dequantised once per call; with a few
// (decode) its rows are streamed straight from the weight, so each byte is read once per step.
#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/weight_rows.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace moe::cpu {

void mla_absorb(ThreadPool& pool, const TensorView& q, const Weight& kv_b, int64_t dn, int64_t dv, const TensorView& qf) {
  const int64_t T = q.rows(), H = q.shape[1], dh = q.shape[2], dr = dh - dn, W = qf.shape[2], r = W - dr;
  MOE_CHECK(qf.dtype == DType::F32 && qf.rows() == T && qf.shape[1] == H, "mla_absorb: qf is {} for q {}",
            qf.shape.str(), q.shape.str());
  MOE_CHECK(kv_b.rows() == H * (dn + dv) && kv_b.cols() == r, "mla_absorb: kv_b_proj is {} but expected [{}, {}]",
            kv_b.w.shape.str(), H * (dn + dv), r);
  pool.parallel_for(H, [&](int64_t h_begin, int64_t h_end, int) {
    const bool streaming = T <= 4;
    std::vector<float> w_uk(streaming ? 0 : size_t(dn * r));
    for (int64_t h = h_begin; h < h_end; ++h) {
      if (!streaming)
        for (int64_t n = 0; n < dn; ++n) dequant_row(kv_b, h * (dn + dv) + n, 0, r, w_uk.data() + n * r);
      for (int64_t t = 0; t < T; ++t) {
        const float* qh = q.as<const float>() + (t * H + h) * dh;
        float* q_lat = qf.as<float>() + (t * H + h) * W;
        std::fill(q_lat, q_lat + r, 0.0f);
        for (int64_t n = 0; n < dn; ++n) {
          if (streaming) axpy_row(qh[n], kv_b, h * (dn + dv) + n, q_lat);
          else axpy_f32(qh[n], w_uk.data() + n * r, q_lat, r);
        }
        std::memcpy(q_lat + r, qh + dn, size_t(dr) * sizeof(float));
      }
    }
  });
}

}  // namespace moe::cpu
