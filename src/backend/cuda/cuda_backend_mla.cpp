// The CUDA backend's MLA ops: latent cache write, query rope, absorbed attention (kernels: mla_*.cu).
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/gemm.h"
#include "core/error.h"

namespace moe {

using cuda::check;
using cuda::ref;
using cuda::tile_for;

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

void CudaBackend::mla_attention(const TensorView& q, const Weight& kv_b, const TensorView& cache, int64_t dn,
                                int64_t dv, float scale, const DeviceBatch& batch, const TensorView& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  if (mla_prefill_wanted(q, cache, dn, dv,
                         batch))  // many new tokens: the expanded form, cuda_backend_prefill.cpp
    return mla_attention_prefill(q, kv_b, cache, dn, dv, scale, batch, out);
  const BatchPlan& plan = *batch.plan;
  const int64_t T = q.rows(), H = q.shape[1], dh = q.shape[2], dr = dh - dn;
  const int64_t width = cache.shape[cache.shape.rank - 1], r = width - dr;
  MOE_CHECK(kv_b.rows() == H * (dn + dv) && kv_b.cols() == r,
            "mla_attention: kv_b_proj is {} but expected [{}, {}]", kv_b.w.shape.str(), H * (dn + dv), r);
  MOE_CHECK(out.numel() == T * H * dv, "mla_attention: out has the wrong size");
  if (T == 0) return;
  Tensor qf = scratch(DType::BF16, {T, H, width});
  cuda::mla_absorb_q(q.as<const float>(), ref(kv_b), T, H, dn, dv, dr, qf.as<uint16_t>(), stream_);

  // The launch depends on T, H, r and the cache capacity per sequence only, never on the positions (a
  // captured decode step replays at every length): each block derives its positions on the device.
  const int64_t capacity = int64_t(plan.max_pages) * plan.page_size;
  const int32_t splits = cuda::mla_choose_splits(T, H, r, capacity, sms_, ctx_.options().mla_splits);
  Tensor o_part, ml;
  if (splits > 1) {
    o_part = scratch(DType::F32, {splits, T, H, r});
    ml = scratch(DType::F32, {splits, T, H, 2});
  }
  Tensor o_lat = scratch(DType::F32, {T, H, r});
  cuda::MlaParams p;
  p.qf = qf.as<const uint16_t>();
  p.cache = cache.as<const uint16_t>();
  p.block_table = batch.block_table.as<const int32_t>();
  p.token_seq = batch.token_seq.as<const int32_t>();
  p.positions = batch.positions.as<const int32_t>();
  p.max_pages = plan.max_pages;
  p.page_size = plan.page_size;
  p.T = int32_t(T);
  p.H = int32_t(H);
  p.r = int32_t(r);
  p.dr = int32_t(dr);
  p.scale = scale;
  p.splits = splits;
  p.o_part = splits > 1 ? o_part.as<float>() : nullptr;
  p.ml_part = splits > 1 ? ml.as<float>() : nullptr;
  p.o_lat = o_lat.as<float>();
  cuda::mla_attention(p, stream_);

  // out[t, h] = W_UV[h] o_lat[t, h]: rows dn .. dn+dv of head h's kv_b block, batched over heads.
  cuda::GemvParams g = dense_gemv(kv_b, o_lat.as<const float>(), H * r, out.as<float>(), H * dv, T);
  g.N = dv;
  g.K = r;
  g.w_row_base = dn;
  g.w_row_step = dn + dv;
  g.x_step = r;
  g.out_step = dv;
  g.grid_y = int32_t(H);
  cuda::gemv(g, tile_for(T), stream_);
}

}  // namespace moe
