// DeepSeek Sparse Attention, the indexer's per-token key and its queries' rotary part.
// Index-cache row (Di values): k = LayerNorm(wk(x)) * w + b, then rope on its first dr values in the half-split
// layout, pairs (v[i], v[i + dr/2]) with frequency f_i (HF's rotate_half; MLA's own rope is interleaved). F32 here;
// the published model keeps these keys in FP8 with a scale per 128 values (DeepSeek's fp8_index), which is the GPU
// backend's work, not done yet.
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/weight_rows.h"
#include "core/error.h"

namespace moe::cpu {

void apply_rope_half(float* v, int64_t dr, int32_t pos, const RopeParams& rope) {
  const int64_t half = dr / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double angle = double(pos) * rope.inv_freq[size_t(i)];
    const double c = std::cos(angle) * rope.attn_factor, s = std::sin(angle) * rope.attn_factor;
    const double a = v[i], b = v[i + half];
    v[i] = float(a * c - b * s);
    v[i + half] = float(b * c + a * s);
  }
}

void dsa_write_index_cache(const TensorView& k, const Weight& norm_w, const Weight& norm_b, float eps,
                           const RopeParams& rope, const BatchPlan& plan, const TensorView& index_cache) {
  const int64_t T = k.rows(), Di = k.row_size(), dr = int64_t(rope.inv_freq.size()) * 2;
  MOE_CHECK(index_cache.dtype == DType::F32 && index_cache.shape[index_cache.shape.rank - 1] == Di,
            "dsa_write_index_cache: index cache {} {} for keys of {}", dtype_name(index_cache.dtype),
            index_cache.shape.str(), Di);
  MOE_CHECK(dr <= Di && plan.num_tokens() == T, "dsa_write_index_cache: {} keys of {} (rope {}) for a plan of {}", T,
            Di, dr, plan.num_tokens());
  std::vector<float> w(static_cast<size_t>(Di)), b(static_cast<size_t>(Di));
  dequant_vector(norm_w.w, w.data());
  dequant_vector(norm_b.w, b.data());
  const int64_t capacity = index_cache.numel() / Di;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t slot = plan.slots[size_t(t)];
    MOE_CHECK(slot >= 0 && slot < capacity, "dsa_write_index_cache: slot {} outside the cache", slot);
    const float* src = k.as<const float>() + t * Di;
    float* dst = index_cache.as<float>() + int64_t(slot) * Di;
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < Di; ++i) mean += src[i];
    mean /= double(Di);
    for (int64_t i = 0; i < Di; ++i) var += (src[i] - mean) * (src[i] - mean);
    const double inv = 1.0 / std::sqrt(var / double(Di) + double(eps));
    for (int64_t i = 0; i < Di; ++i) dst[i] = float((src[i] - mean) * inv * w[size_t(i)] + b[size_t(i)]);
    apply_rope_half(dst, dr, plan.positions[size_t(t)], rope);
  }
}

void dsa_rope_q(const TensorView& q, const RopeParams& rope, const BatchPlan& plan) {
  const int64_t T = q.rows(), Hi = q.shape[1], Di = q.shape[2], dr = int64_t(rope.inv_freq.size()) * 2;
  MOE_CHECK(dr <= Di && plan.num_tokens() == T, "dsa_rope_q: q {} (rope {}) for a plan of {}", q.shape.str(), dr,
            plan.num_tokens());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < Hi; ++h) apply_rope_half(q.as<float>() + (t * Hi + h) * Di, dr, plan.positions[size_t(t)], rope);
}

}  // namespace moe::cpu
