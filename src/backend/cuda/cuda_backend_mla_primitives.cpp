// The CUDA backend's MLA primitives (Backend::mla_absorb, mla_latent_attention, mla_project_v); the absorbed
// mla_attention (cuda_backend_mla.cpp) is their composition. The kernels:
// mla_absorb_q (qf in BF16, the cache dtype), the split-KV attention kernel of mla_attention.cu (which also
// writes the log-sum-exp when asked) and the batched-over-heads GEMV for W_UV.
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/gemm.h"
#include "core/error.h"

namespace moe {

void CudaBackend::mla_absorb(const TensorView& q, const Weight& kv_b, int64_t dn, int64_t dv, const TensorView& qf) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t T = q.rows(), H = q.shape[1], dr = q.shape[2] - dn, W = qf.shape[qf.shape.rank - 1], r = W - dr;
  MOE_CHECK(q.dtype == DType::F32 && qf.dtype == DType::BF16, "mla_absorb: q F32 and qf BF16 on the CUDA backend");
  MOE_CHECK(qf.numel() == T * H * W, "mla_absorb: qf is {} for q {}", qf.shape.str(), q.shape.str());
  MOE_CHECK(kv_b.rows() == H * (dn + dv) && kv_b.cols() == r, "mla_absorb: kv_b_proj is {} but expected [{}, {}]",
            kv_b.w.shape.str(), H * (dn + dv), r);
  if (T == 0) return;
  if (mla_products_on_gemm(T, kv_b)) {
    // Per head h: qf[:, h, :r] [T, r] = BF16(q_nope[:, h]) [T, dn] @ W_UK[h] [dn, r] (rows h (dn + dv) .. of
    // kv_b as they are), one strided batched GEMM over the heads, BF16 out.
    Tensor qn = scratch(DType::BF16, {T, H, dn});
    cuda::mla_split_q(q.as<const float>(), T, H, dn, dr, r, qn.as<uint16_t>(), qf.as<uint16_t>(), stream_);
    cuda::gemm_bf16_strided_batched(cublas_, qn.as<const uint16_t>(), H * dn, dn, kv_b.w.as<const uint16_t>(),
                                    r, (dn + dv) * r, true, qf.as<uint16_t>(), CUDA_R_16BF, H * W, W, T, r,
                                    dn, H);
    return;
  }
  cuda::mla_absorb_q(q.as<const float>(), cuda::ref(kv_b), T, H, dn, dv, dr, qf.as<uint16_t>(), stream_);
}

void CudaBackend::mla_latent_attention(const TensorView& qf, const TensorView& cache, float scale,
                                       const DeviceBatch& batch, const TensorView& o_lat, const TensorView& lse) {
  latent_attention(qf, cache, scale, batch, {}, o_lat, lse);
}

// Dense (indices empty: positions 0 .. positions[t]) or sparse (V3.2: the positions of indices [T, K]).
void CudaBackend::latent_attention(const TensorView& qf, const TensorView& cache, float scale, const DeviceBatch& batch,
                                   const TensorView& indices, const TensorView& o_lat, const TensorView& lse) {
  const cuda::DeviceGuard guard(ctx_.device());
  const BatchPlan& plan = *batch.plan;
  const int64_t T = qf.rows(), H = qf.shape[1], W = qf.shape[2], r = o_lat.shape[o_lat.shape.rank - 1], dr = W - r;
  MOE_CHECK(qf.dtype == DType::BF16 && cache.dtype == DType::BF16, "mla_latent_attention: qf and cache are BF16");
  MOE_CHECK(cache.shape[cache.shape.rank - 1] == W, "mla_latent_attention: cache rows are {} wide, qf rows {}",
            cache.shape[cache.shape.rank - 1], W);
  MOE_CHECK(o_lat.dtype == DType::F32 && o_lat.numel() == T * H * r &&
                (!lse.data || (lse.dtype == DType::F32 && lse.numel() == T * H)),
            "mla_latent_attention: o_lat {} / lse {} for qf {}", o_lat.shape.str(), lse.shape.str(), qf.shape.str());
  MOE_CHECK(!indices.data || (indices.dtype == DType::I32 && indices.rows() == T),
            "mla_sparse_latent_attention: indices {} for {} tokens", indices.shape.str(), T);
  if (T == 0) return;
  // As in mla_attention: the launch depends on T, H, r and the cache capacity per sequence only (for a sparse
  // call, the index list's length K).
  const int64_t capacity = indices.data ? indices.row_size() : int64_t(plan.max_pages) * plan.page_size;
  // A wgmma kernel where one applies and Auto prefers it (CudaOptions::mla_decode may force either kind).
  const MlaDecodeKernel k = ctx_.options().mla_decode;
  const bool wgmma = k != MlaDecodeKernel::Mma && cuda::mla_wgmma_applies(H, r, dr) &&
                     (k == MlaDecodeKernel::Wgmma || cuda::mla_wgmma_preferred(T, H, capacity));
  const int32_t splits = cuda::mla_choose_splits(T, H, r, capacity, sms_, ctx_.options().mla_splits, wgmma);
  Tensor o_part, ml;
  if (splits > 1) {
    o_part = scratch(DType::F32, {splits, T, H, r});
    ml = scratch(DType::F32, {splits, T, H, 2});
  }
  cuda::MlaParams p;
  p.qf = qf.as<const uint16_t>();
  p.cache = cache.as<const uint16_t>();
  p.cache_rows = cache.numel() / W;
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
  p.lse = lse.data ? lse.as<float>() : nullptr;
  if (indices.data) {
    p.indices = indices.as<const int32_t>();
    p.K = int32_t(indices.row_size());
  }
  p.wgmma = wgmma;
  cuda::mla_attention(p, stream_);
}

void CudaBackend::mla_project_v(const TensorView& o_lat, const Weight& kv_b, int64_t dn, int64_t dv,
                                const TensorView& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t T = o_lat.rows(), H = o_lat.shape[1], r = o_lat.shape[2];
  MOE_CHECK(kv_b.rows() == H * (dn + dv) && kv_b.cols() == r,
            "mla_project_v: kv_b_proj is {} but expected [{}, {}]", kv_b.w.shape.str(), H * (dn + dv), r);
  MOE_CHECK(out.dtype == DType::F32 && out.numel() == T * H * dv, "mla_project_v: out is {} for [{}, {} * {}]",
            out.shape.str(), T, H, dv);
  if (T == 0) return;
  if (mla_products_on_gemm(T, kv_b)) {
    // Per head h: out[:, h] [T, dv] = BF16(o_lat[:, h]) [T, r] @ W_UV[h]^T (rows h (dn + dv) + dn .. + dv of
    // kv_b, [dv, r]), one strided batched GEMM over the heads, F32 out.
    Tensor ob = scratch(DType::BF16, {T, H, r});
    cuda::f32_to_bf16(o_lat.as<const float>(), ob.as<uint16_t>(), T * H * r, stream_);
    cuda::gemm_bf16_strided_batched(cublas_, ob.as<const uint16_t>(), H * r, r,
                                    kv_b.w.as<const uint16_t>() + dn * r, r, (dn + dv) * r, false,
                                    out.as<float>(), CUDA_R_32F, H * dv, dv, T, dv, r, H);
    return;
  }
  // out[t, h] = W_UV[h] o_lat[t, h]: rows dn .. dn+dv of head h's kv_b block, batched over heads.
  cuda::GemvParams g = dense_gemv(kv_b, o_lat.as<const float>(), H * r, out.as<float>(), H * dv, T);
  g.N = dv;
  g.K = r;
  g.w_row_base = dn;
  g.w_row_step = dn + dv;
  g.x_step = r;
  g.out_step = dv;
  g.grid_y = int32_t(H);
  cuda::gemv(g, cuda::tile_for(T), stream_);
}

}  // namespace moe
