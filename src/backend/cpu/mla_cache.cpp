// MLA's per-token cache entry and the query's rotary part.
// Cache row (r + dr values): the normalised latent c = kv_a_layernorm(kv_a[:r]) and the shared rope key
// rope(kv_a[r:]). Rotary pairs are interleaved (v[2i], v[2i+1]) as in the published checkpoints.
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/weight_rows.h"
#include "core/error.h"

namespace moe::cpu {

void apply_rope(float* v, int64_t dr, int32_t pos, const RopeParams& rope) {
  for (int64_t i = 0; i < dr / 2; ++i) {
    const double angle = double(pos) * rope.inv_freq[size_t(i)];
    const double c = std::cos(angle) * rope.attn_factor, s = std::sin(angle) * rope.attn_factor;
    const double a = v[2 * i], b = v[2 * i + 1];
    v[2 * i] = float(a * c - b * s);
    v[2 * i + 1] = float(a * s + b * c);
  }
}

void mla_write_cache(const TensorView& kv_a, const Weight& kv_norm, float eps, const RopeParams& rope,
                     const BatchPlan& plan, const TensorView& cache) {
  const int64_t T = kv_a.rows(), width = kv_a.row_size();
  const int64_t dr = int64_t(rope.inv_freq.size()) * 2, r = width - dr;
  MOE_CHECK(cache.shape[cache.shape.rank - 1] == width, "mla_write_cache: cache rows are {} wide, not {}",
            cache.shape[cache.shape.rank - 1], width);
  std::vector<float> w(static_cast<size_t>(r));
  dequant_vector(kv_norm.w, w.data());
  const int64_t capacity = cache.numel() / width;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t slot = plan.slots[size_t(t)];
    MOE_CHECK(slot >= 0 && slot < capacity, "mla_write_cache: slot {} outside the cache", slot);
    const float* src = kv_a.as<const float>() + t * width;
    float* dst = cache.as<float>() + int64_t(slot) * width;
    double ss = 0.0;
    for (int64_t i = 0; i < r; ++i) ss += double(src[i]) * src[i];
    const float inv = float(1.0 / std::sqrt(ss / double(r) + double(eps)));
    for (int64_t i = 0; i < r; ++i) dst[i] = w[size_t(i)] * (src[i] * inv);
    std::memcpy(dst + r, src + r, size_t(dr) * 4);
    apply_rope(dst + r, dr, plan.positions[size_t(t)], rope);
  }
}

void mla_rope_q(const TensorView& q, int64_t dn, const RopeParams& rope, const BatchPlan& plan) {
  const int64_t T = q.rows(), H = q.shape[1], dh = q.shape[2], dr = dh - dn;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) apply_rope(q.as<float>() + (t * H + h) * dh + dn, dr, plan.positions[size_t(t)], rope);
}

}  // namespace moe::cpu
