// The CUDA backend's MLA ops: latent cache write, query rope, absorbed attention (kernels: mla_*.cu).
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/gemm.h"
#include "core/error.h"

namespace moe {

using cuda::check;
using cuda::ref;

namespace {

void check_cache_write(const TensorView& kv_a, const RopeParams& rope, const DeviceBatch& batch,
                       const TensorView& cache) {
  const int64_t width = kv_a.row_size();
  MOE_CHECK(cache.dtype == DType::BF16, "mla_write_cache: the CUDA cache is BF16");
  MOE_CHECK(cache.shape[cache.shape.rank - 1] == width, "mla_write_cache: cache rows are {} wide, not {}",
            cache.shape[cache.shape.rank - 1], width);
  MOE_CHECK(int64_t(rope.inv_freq.size()) * 2 < width, "mla_write_cache: rope wider than the cache row");
  const int64_t capacity = cache.numel() / width;
  for (int32_t slot : batch.plan->slots)
    MOE_CHECK(slot >= 0 && slot < capacity, "mla_write_cache: slot {} outside the cache", slot);
}

}  // namespace

void CudaBackend::mla_rope_and_cache(const TensorView& q, int64_t dn, const TensorView& kv_a,
                                     const Weight& kv_norm, float eps, const RopeParams& rope,
                                     const DeviceBatch& batch, const TensorView& cache) {
  const cuda::DeviceGuard guard(ctx_.device());
  check_cache_write(kv_a, rope, batch, cache);
  const int64_t T = kv_a.rows(), width = kv_a.row_size(), dr = int64_t(rope.inv_freq.size()) * 2;
  MOE_CHECK(q.rows() == T && q.shape[2] == dn + dr, "mla_rope_and_cache: q is {} for {} tokens",
            q.shape.str(), T);
  cuda::mla_rope_and_cache(kv_a.as<const float>(), ref(kv_norm), eps, q.as<float>(), inv_freq(rope),
                           rope.attn_factor, batch.positions.as<const int32_t>(),
                           batch.slots.as<const int32_t>(), T, q.shape[1], dn, width - dr, dr,
                           cache.as<uint16_t>(), stream_);
}

void CudaBackend::mla_write_cache(const TensorView& kv_a, const Weight& kv_norm, float eps,
                                  const RopeParams& rope, const DeviceBatch& batch, const TensorView& cache) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t T = kv_a.rows(), width = kv_a.row_size(), dr = int64_t(rope.inv_freq.size()) * 2;
  check_cache_write(kv_a, rope, batch, cache);
  cuda::mla_write_cache(kv_a.as<const float>(), ref(kv_norm), eps, inv_freq(rope), rope.attn_factor,
                        batch.positions.as<const int32_t>(), batch.slots.as<const int32_t>(), T, width - dr,
                        dr, cache.as<uint16_t>(), stream_);
}

void CudaBackend::mla_rope_q(const TensorView& q, int64_t dn, const RopeParams& rope,
                             const DeviceBatch& batch) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t T = q.rows(), H = q.shape[1], dh = q.shape[2];
  cuda::mla_rope_q(q.as<float>(), inv_freq(rope), rope.attn_factor, batch.positions.as<const int32_t>(), T, H,
                   dn, dh - dn, stream_);
}

// Many new tokens: the expanded form (cuda_backend_prefill.cpp); otherwise the absorbed form as the default
// composition of the primitives (cuda_backend_mla_primitives.cpp): absorb, split-KV attention, W_UV.
void CudaBackend::mla_attention(const TensorView& q, const Weight& kv_b, const TensorView& cache, int64_t dn,
                                int64_t dv, float scale, const DeviceBatch& batch, const TensorView& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  if (mla_prefill_wanted(q, cache, dn, dv, batch)) return mla_attention_prefill(q, kv_b, cache, dn, dv, scale, batch, out);
  MOE_CHECK(out.numel() == q.rows() * q.shape[1] * dv, "mla_attention: out has the wrong size");
  Backend::mla_attention(q, kv_b, cache, dn, dv, scale, batch, out);
}

}  // namespace moe
