// RMSNorm per row: out = w * x / sqrt(mean(x^2) + eps), statistics in double for the long rows of V3.
#include <cmath>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/weight_rows.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace moe::cpu {

void rms_norm(ThreadPool& pool, const TensorView& x, const Weight& w, float eps, const TensorView& out) {
  const int64_t T = x.rows(), D = x.row_size();
  MOE_CHECK(w.w.numel() == D, "rms_norm: weight has {} elements for rows of {}", w.w.numel(), D);
  std::vector<float> weight(static_cast<size_t>(D));
  dequant_vector(w.w, weight.data());
  pool.parallel_for(T, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t) {
      const float* xt = x.as<const float>() + t * D;
      float* ot = out.as<float>() + t * D;
      double ss = 0.0;
      for (int64_t i = 0; i < D; ++i) ss += double(xt[i]) * xt[i];
      const float inv = float(1.0 / std::sqrt(ss / double(D) + double(eps)));
      for (int64_t i = 0; i < D; ++i) ot[i] = weight[i] * (xt[i] * inv);
    }
  }, 4);
}

}  // namespace moe::cpu
