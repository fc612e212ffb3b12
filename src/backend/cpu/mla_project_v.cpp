// MLA, absorbed form, step 3: out[t, h] = W_UV[h] o_lat[t, h] (dv values per head). Work is split over heads;
// with many tokens each head's W_UV is dequantised once per call, with a few its rows are streamed.
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/weight_rows.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace moe::cpu {

void mla_project_v(ThreadPool& pool, const TensorView& o_lat, const Weight& kv_b, int64_t dn, int64_t dv, const TensorView& out) {
  const int64_t T = o_lat.rows(), H = o_lat.shape[1], r = o_lat.shape[2];
  MOE_CHECK(kv_b.rows() == H * (dn + dv) && kv_b.cols() == r,
            "mla_project_v: kv_b_proj is {} but expected [{}, {}]", kv_b.w.shape.str(), H * (dn + dv), r);
  MOE_CHECK(out.numel() == T * H * dv, "mla_project_v: out is {} for [{}, {} * {}]", out.shape.str(), T, H, dv);
  pool.parallel_for(H, [&](int64_t h_begin, int64_t h_end, int) {
    const bool streaming = T <= 4;
    std::vector<float> w_uv(streaming ? 0 : size_t(dv * r));
    for (int64_t h = h_begin; h < h_end; ++h) {
      if (!streaming)
        for (int64_t v = 0; v < dv; ++v) dequant_row(kv_b, h * (dn + dv) + dn + v, 0, r, w_uv.data() + v * r);
      for (int64_t t = 0; t < T; ++t) {
        const float* o = o_lat.as<const float>() + (t * H + h) * r;
        float* oh = out.as<float>() + (t * H + h) * dv;
        for (int64_t v = 0; v < dv; ++v)
          oh[v] = streaming ? dot_row(o, kv_b, h * (dn + dv) + dn + v) : dot_f32(w_uv.data() + v * r, o, r);
      }
    }
  });
}

}  // namespace moe::cpu
